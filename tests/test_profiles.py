import pytest

from helpers import profiles


def test_named_profiles_differ_in_scale():
    smoke, cpu, gpu = (profiles.resolve(name) for name in ("smoke", "cpu", "gpu"))
    assert smoke.train_size < 1000 and cpu.train_size is None
    assert smoke.epochs < cpu.epochs
    assert gpu.model_name == profiles.GPU_MODEL and gpu.precision == "bf16" and gpu.dataset_name == "cifar10"
    assert cpu.model_name == "tiny-vit" and cpu.dataset_name == "digits"


def test_auto_follows_course_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    settings = profiles.resolve("auto")
    assert settings.profile == "smoke" and "COURSE_PROFILE" in settings.reason


def test_auto_without_gpu_is_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "device_name", lambda: "cpu")
    settings = profiles.resolve("auto")
    assert settings.profile == "cpu" and "no CUDA" in settings.reason


def test_auto_with_gpu_but_offline_and_uncached_is_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "device_name", lambda: "cuda")
    monkeypatch.setattr(profiles, "is_online", lambda: False)
    monkeypatch.setattr(profiles, "gpu_assets_cached", lambda: False)
    assert profiles.resolve("auto").profile == "cpu"
    monkeypatch.setattr(profiles, "gpu_assets_cached", lambda: True)
    assert profiles.resolve("auto").profile == "gpu"


def test_overrides_replace_single_settings_and_keep_keeps_the_profiles_value():
    settings = profiles.resolve("cpu", epochs=2, lr=5e-4, batch_size=profiles.KEEP)
    assert (settings.epochs, settings.lr, settings.batch_size) == (2, 5e-4, profiles.PROFILES["cpu"]["batch_size"])
    assert "epochs=2" in settings.reason and "batch_size" not in settings.reason


def test_none_is_a_value_where_it_means_something_and_refused_where_it_does_not():
    settings = profiles.resolve("smoke", train_size=None, max_grad_norm=None)
    assert settings.train_size is None and settings.max_grad_norm is None  # all images, no clipping
    assert profiles.resolve("smoke", train_size=profiles.KEEP).train_size == profiles.PROFILES["smoke"]["train_size"]
    with pytest.raises(ValueError, match="epochs cannot be None .*profiles.KEEP"):
        profiles.resolve("smoke", epochs=None)


@pytest.mark.parametrize("setting, value, message", [
    ("epochs", "abc", "epochs must be a whole number, got 'abc'"),
    ("epochs", 2.5, "epochs must be a whole number, got 2.5"),
    ("batch_size", True, "batch_size must be a whole number, got True"),
    ("lr", "fast", "lr must be a number, got 'fast'"),
    ("lr", float("inf"), "lr must be a finite number, got inf"),
    ("weight_decay", float("nan"), "weight_decay must be a finite number, got nan"),
    ("seed", 2**32, r"seed must be in \[0, 4294967295\], got 4294967296"),
    ("seed", -1, r"seed must be in \[0, 4294967295\]"),
    ("model_name", "", "model_name must be a non-empty text"),
    ("precision", 16, "precision must be a non-empty text, got 16"),
])
def test_settings_are_typed(setting, value, message):
    with pytest.raises(ValueError, match=f"Bad setting: {message}"):
        profiles.resolve("cpu", **{setting: value})


def test_numpy_numbers_are_numbers():
    import numpy as np

    assert profiles.resolve("cpu", epochs=np.int64(3), lr=np.float64(1e-3)).epochs == 3


def test_with_overrides_checks_names_like_resolve():
    settings = profiles.resolve("smoke")
    assert profiles.with_overrides(settings, epochs=4, lr=profiles.KEEP).epochs == 4
    assert profiles.with_overrides(settings) is settings
    with pytest.raises(ValueError, match="Unknown setting\\(s\\) 'epoch'"):
        profiles.with_overrides(settings, epoch=4)


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="smoke, cpu, gpu, auto"):
        profiles.resolve("laptop")


def test_unknown_setting_names_the_settings():
    with pytest.raises(ValueError, match="epochs") as error:
        profiles.resolve("cpu", epoch=3)
    assert "Unknown setting(s) 'epoch'" in str(error.value)


def test_bad_course_profile_variable(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="COURSE_PROFILE='fast'"):
        profiles.resolve("auto")


@pytest.mark.parametrize("setting, value", [("lr", 0), ("lr", -1e-3), ("batch_size", 0), ("grad_accum", 0),
                                            ("epochs", 0), ("precision", "fp8")])
def test_bad_values_are_refused(setting, value):
    with pytest.raises(ValueError, match=setting.split("_")[0]):
        profiles.resolve("cpu", **{setting: value})


def test_offline_flag_means_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert profiles.is_online() is False


def test_environment_report_names_versions_device_and_profile():
    import torch
    import transformers

    report = profiles.environment_report(profiles.resolve("smoke"))
    assert torch.__version__ in report and transformers.__version__ in report
    assert "device" in report and "threads" in report and "offline" in report
    assert "profile       smoke: asked for by name" in report


def test_profile_table_lists_every_setting():
    table = profiles.profile_table()
    for name in profiles.SETTING_NAMES:
        assert f"| {name} |" in table
