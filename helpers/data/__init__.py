"""Images for a ViT (lessons 03, 04 and 07): datasets by name, your own folders and photos, splits, transforms,
loaders, augmentation. Each concern has its own module; everything public is importable from `helpers.data`.
"""
from helpers._moved import forwarder
from helpers.data.augment import (  # noqa: F401
    NOT_MIRROR_SAFE,
    PRESETS,
    RANDAUGMENT_BINS,
    Augmentation,
    BatchTransform,
    BoxSampler,
    Strengths,
    build,
    check_preset,
    cutmix_box,
    mirror_safe,
    mix_batch,
    strengths,
)
from helpers.data.cifar import (  # noqa: F401
    NumpyOnlyUnpickler,
    download_file,
    fetch_cifar,
    read_cifar,
    read_numpy_pickle,
    read_real_cifar,
    read_stand_in_cifar,
)
from helpers.data.datasets import (  # noqa: F401
    DATASET_NAMES,
    DEFAULT_ROOT,
    HF_DATASETS_MISSING,
    HubImages,
    first_column_of_type,
    hf_datasets_installed,
    load_cifar,
    load_dataset,
    load_digits,
    load_hf_dataset,
)
from helpers.data.folders import (  # noqa: F401
    IMAGE_SUFFIXES,
    TINY_IMAGE_SIDE,
    FolderScan,
    Problem,
    export_image_folder,
    file_hash,
    image_files,
    inspect_image,
    load_image_folder,
    scan_folder,
)
from helpers.data.images import (  # noqa: F401
    FileImages,
    LabeledImages,
    TensorImages,
    pil_to_rgb,
    read_rgb,
)
from helpers.data.loaders import (  # noqa: F401
    class_weights,
    make_loader,
    weighted_sampler,
)
from helpers.data.photos import (  # noqa: F401
    BACKGROUND,
    HEIC_FIX,
    HEIC_ISSUE,
    HEIC_SUFFIXES,
    NearDuplicate,
    UnreadablePhoto,
    dataset_hashes,
    has_transparency,
    heif_available,
    near_duplicates,
    open_photo,
    perceptual_hash,
    photo_notes,
    prepare,
    read_photo,
    resize_short_side,
    to_rgb8,
)
from helpers.data.splits import (  # noqa: F401
    SPLIT_NAMES,
    Leak,
    LeakageReport,
    Splits,
    class_counts,
    content_hash,
    describe_item,
    find_leaks,
    group_split,
    group_split_dataset,
    merge_groups,
    name_groups,
    pairs_across_splits,
    split_dataset,
    stratified_split,
    stratified_subset,
)
from helpers.data.transforms import (  # noqa: F401
    ImageSpec,
    channel_mean_std,
    eval_transform,
    to_model_input,
)

__getattr__ = forwarder(__name__)  # names that moved to a lesson companion or another module
