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


def test_overrides_replace_single_settings_and_none_keeps_default():
    settings = profiles.resolve("cpu", epochs=2, lr=5e-4, batch_size=None)
    assert (settings.epochs, settings.lr, settings.batch_size) == (2, 5e-4, profiles.PROFILES["cpu"]["batch_size"])
    assert "epochs=2" in settings.reason


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
