"""Training (lesson 05): `fit()` and its step, the optimizer and schedule, checkpoints, the learning-rate finder,
`DeviceImages`, speed and memory, and the fine-tune cache. Everything public is importable from `helpers.train`.
"""
from helpers._moved import forwarder
from helpers.train.cache import (  # noqa: F401
    FINETUNED_CACHE,
    FineTuned,
    finetune_key,
    finetuned,
)
from helpers.train.checkpoint import (  # noqa: F401
    BestWeights,
    CheckpointError,
    kept_random_state,
    latest_checkpoint,
    left_as_it_was,
    load_checkpoint,
    plain_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_atomically,
)
from helpers.train.device_images import (  # noqa: F401
    DeviceImages,
    default_device,
    keep_batch,
    prepare_batch,
    random_crop_flip_theta,
)
from helpers.train.fingerprint import (  # noqa: F401
    data_identity,
    resume_problems,
    run_fingerprint,
)
from helpers.train.guards import (  # noqa: F401
    NonFiniteLoss,
)
from helpers.train.history import (  # noqa: F401
    History,
)
from helpers.train.loop import (  # noqa: F401
    cross_entropy,
    fit,
    loader_for,
    logits_of,
    make_accelerator,
    maybe_compile,
    mixed_precision_for,
    run_train_epoch,
    seed_everything,
    train_step,
    validate,
)
from helpers.train.optim import (  # noqa: F401
    NO_DECAY_NAME_PARTS,
    OPTIMIZERS,
    SCHEDULES,
    SGD_MOMENTUM,
    RunSteps,
    is_no_decay,
    lr_factor,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    run_steps,
    schedule_curve,
    warmup_cosine,
)
from helpers.train.rundir import (  # noqa: F401
    FolderInUse,
    claimed_run_folder,
)
from helpers.train.speed import (  # noqa: F401
    Throughput,
    measure_training_throughput,
    saved_for_backward_bytes,
    synchronize,
)

__getattr__ = forwarder(__name__)  # names that moved to a lesson companion or another module
