"""Images for a ViT (lessons 03 and 04): datasets by name, your own folders, splits, transforms, loaders,
augmentation. Each concern has its own module; everything public is importable from `helpers.data`.
"""
from helpers.data.transforms import (  # noqa: F401
    channel_mean_std, eval_transform, ImageSpec, to_model_input,
)
from helpers.data.images import (  # noqa: F401
    FileImages, LabeledImages, pil_to_rgb, read_rgb, TensorImages,
)
from helpers.data.datasets import (  # noqa: F401
    DATASET_NAMES, DEFAULT_ROOT, first_column_of_type, hf_datasets_installed, HF_DATASETS_MISSING, HubImages,
    load_cifar, load_dataset, load_digits, load_hf_dataset, read_cifar_batches, read_cifar_pickle,
)
from helpers.data.folders import (  # noqa: F401
    export_image_folder, file_hash, FolderScan, image_files, IMAGE_SUFFIXES, inspect_image,
    load_image_folder, Problem, scan_folder, TINY_IMAGE_SIDE,
)
from helpers.data.splits import (  # noqa: F401
    class_counts, content_hash, describe_item, find_leaks, Leak, LeakageReport,
    split_dataset, SPLIT_NAMES, Splits, stratified_split, stratified_subset,
)
from helpers.data.loaders import (  # noqa: F401
    class_weights, make_loader, weighted_sampler,
)
from helpers.data.augment import (  # noqa: F401
    Augmentation, BatchTransform, BoxSampler, build, check_preset, cutmix_box,
    mix_batch, PRESETS, RANDAUGMENT_BINS, Strengths, strengths,
)

from helpers._moved import forwarder

__getattr__ = forwarder(__name__)  # names that moved to a lesson companion or another module
