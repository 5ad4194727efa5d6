"""Names that moved when `helpers` was split into the library and the lesson companions.

Each old place still finds its names for one release: the old module's `__getattr__` (from `forwarder`)
imports the name from its new home and warns with a `DeprecationWarning` naming that home.
"""
from __future__ import annotations

import importlib
import warnings

# old module -> {new home: names}
MOVED: dict[str, dict[str, str]] = {
    "helpers.attention": {
        "helpers.lessons.l01_vit_theory": (
            "HEAD_CHOICES attention_explorer plot_attention_maps plot_attention_view "
            "plot_position_similarity position_similarity similarity_by_relation"
        ),
    },
    "helpers.augment": {
        "helpers.data.augment": (
            "Augmentation BatchTransform BoxSampler PRESETS RANDAUGMENT_BINS Strengths build "
            "check_preset cutmix_box mix_batch strengths"
        ),
        "helpers.lessons.l04_augmentation": (
            "ABLATION_PRESETS AblationResult apply_per_sample check_cutmix_box "
            "check_labels_valid count_distinct gallery_transforms loader_throughput "
            "plot_augmentations plot_batch preview preview_figure run_ablation same_draw_demo "
            "target_title throughput_by_preset"
        ),
    },
    "helpers.data": {
        "helpers.lessons.l03_datasets": (
            "LoaderOptions check_channel_stats check_clean_split cpu_load "
            "dataset_with_duplicates loader_options_to_compare long_tailed_subset "
            "measure_throughput plant_messy_folder plot_before_after plot_class_balance "
            "resize_cost rewrite split_hashes"
        ),
        "helpers.plots": "format_cell markdown_table",
    },
    "helpers.distributed_demo": {
        "helpers.lessons.l05_distributed_demo": "main weights_checksum",
    },
    "helpers.evaluate": {
        "helpers.attention": "rollout_maps",
        "helpers.export": (
            "classify_file export_onnx onnx_available onnx_max_difference size_on_disk "
            "throughput"
        ),
        "helpers.lessons.l06_evaluation": (
            "CORRUPTIONS SEVERITIES TTAResult check_ece check_worst_recall compare_tta "
            "corrupt plot_robustness robustness_sweep samples_needed tta_table"
        ),
        "helpers.train.cache": "FINETUNED_CACHE FineTuned finetune_key finetuned",
    },
    "helpers.freezing": {
        "helpers.lessons.l02_freezing": (
            "PeakMemory Recipe RunResult activation_mb_per_image check_last_two_blocks "
            "check_llrd_groups compare_strategies default_recipes describe_regime "
            "logistic_regression_accuracy pixel_matrix plot_comparison plot_trainable_map "
            "results_table run_recipe split_epochs"
        ),
    },
    "helpers.scratch": {
        "helpers.course.notebook": "show_code",
        "helpers.lessons.l01_vit_theory": (
            "ACTIVATIONS EncoderBlock InterpolatedPositions MLP MultiHeadAttention "
            "PUBLISHED_SIZES PatchEmbedding ScratchViT TRANSFORMERS_NAMES "
            "accuracy_by_resolution attention attention_weights budget_table "
            "check_attention_head check_config check_token_arithmetic "
            "interpolate_position_embeddings parameter_budget patchify plot_parameter_budget "
            "plot_patch_grid plot_token_cost small_cnn standard_configs transformers_names"
        ),
        "helpers.models": "as_pair attention_flops grid_size mlp_flops sequence_length",
    },
    "helpers.train": {
        "helpers.lessons.l05_training": (
            "DISTRIBUTED_DEMO LRFinderResult accuracy_metric check_accumulation check_lr_choice "
            "collate_for_trainer compare_histories fit_with_trainer gradients lr_find sweep_learning_rates "
            "history_callback make_kit_trainer_class max_difference plot_schedules "
            "plot_throughput run_distributed_demo side_by_side throughput_table "
            "torchrun_command"
        ),
        "helpers.models": "training_flops_per_image",
    },
}


def new_home(old_module: str, name: str) -> str | None:
    """The module that now holds `old_module.name`, or None when it did not move."""
    for home, names in MOVED.get(old_module, {}).items():
        if name in names.split():
            return home
    return None


def forwarder(old_module: str):
    """A module-level `__getattr__` for `old_module`: moved names come from their new home, with a warning."""

    def __getattr__(name: str):
        home = new_home(old_module, name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} has moved to {home}.{name}; import it from there "
                      "(the old path goes away in the next release).", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)

    return __getattr__
