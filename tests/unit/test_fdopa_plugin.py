"""``[pipelines.fdopa_pet]``: settings validation, registry entry, model check, options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.errors import AnalysisError
from service.pipelines import registry
from service.pipelines.fdopa_pet import plugin
from service.pipelines.fdopa_pet.pipeline import Options
from service.pipelines.fdopa_pet.plugin import FdopaPetSettings

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def test_defaults_and_options() -> None:
    s = FdopaPetSettings()
    assert s.enabled and s.segmentation == "unet" and s.report_failures
    assert s.keywords == ("FDOPA", "F-DOPA", "FLUORODOPA", "18F-DOPA")
    options = Options.of(s.model_copy(update={"static_window_min": (20.0, 40.0),
                                              "companion_wait_s": 30.0}))
    assert options.static_window_s == (1200.0, 2400.0)
    assert options.rules.companion_wait_s == 30.0 and options.rules.static_wait_s == 120.0
    assert FdopaPetSettings(fallback_keywords="").keywords == ()
    rules = Options.of(s.model_copy(update={"flair_wait_s": 45.0, "expect_flair": True,
                                            "flair_keywords": "FLAIR, DARK FLUID"})).rules
    assert (rules.flair_wait_s, rules.expect_flair) == (45.0, True)
    assert rules.flair_keywords == ("FLAIR", "DARK FLUID")
    assert (s.flair_wait_s, s.expect_flair, s.flair_segmentation) == (600.0, False, "auto")


@pytest.mark.parametrize(("section", "key"), [
    ({"segmentation": "cnn"}, "pipelines.fdopa_pet.segmentation"),
    ({"model_sha256": "ABC"}, "pipelines.fdopa_pet.model_sha256"),
    ({"static_window_min": [30, 10]}, "pipelines.fdopa_pet.static_window_min"),
    ({"companion_wait_s": -1}, "pipelines.fdopa_pet.companion_wait_s"),
    ({"min_registration_quality": 1.5}, "pipelines.fdopa_pet.min_registration_quality"),
    ({"min_registration_quality": 0.8, "warn_registration_quality": 0.6},
     "pipelines.fdopa_pet"),
    ({"threshold": 1.6}, "pipelines.fdopa_pet.threshold"),
    ({"flair_wait_s": -1}, "pipelines.fdopa_pet.flair_wait_s"),
    ({"flair_segmentation": "cnn"}, "pipelines.fdopa_pet.flair_segmentation"),
    ({"min_flair_registration_quality": 2}, "pipelines.fdopa_pet.min_flair_registration_quality"),
])
def test_bad_values_name_their_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(registry.PipelineConfigError, match=f"^{key}"):
        registry.validate_sections({"fdopa_pet": section})


def test_registered_next_to_dat() -> None:
    specs = registry.specs()
    assert {"dat_spect", "fdopa_pet"} <= set(specs)
    assert specs["fdopa_pet"] is plugin.SPEC
    assert specs["fdopa_pet"].settings_model is FdopaPetSettings


class _Entry:
    def __init__(self, name: str, spec: Any) -> None:
        self.name, self._spec = name, spec

    def load(self) -> Any:
        return self._spec


def test_entry_point_of_a_builtin_is_taken_once_a_twin_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [_Entry("fdopa_pet", plugin.SPEC)]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: entries)
    assert registry.specs()["fdopa_pet"] is plugin.SPEC
    twin = registry.PipelineSpec("fdopa_pet", "twin", FdopaPetSettings, plugin.build,
                                 plugin.check_models)
    entries[0] = _Entry("fdopa_pet", twin)
    with pytest.raises(ValueError, match="registered twice"):
        registry.specs()


def test_check_models_threshold_and_missing_model(tmp_path: Path) -> None:
    [status, flair] = plugin.check_models(FdopaPetSettings(segmentation="threshold"))
    assert status.ok and "threshold-only baseline" in status.detail
    [missing, _] = plugin.check_models(FdopaPetSettings(model_path=tmp_path / "none.onnx"))
    assert not missing.ok and "not found" in missing.detail
    # the FLAIR U-Net: absent under "auto" is the named classical threshold, under "unet" a fault
    absent = tmp_path / "flair.onnx"
    [_, auto] = plugin.check_models(FdopaPetSettings(segmentation="threshold",
                                                     flair_model_path=absent))
    assert auto.ok and auto.detail == ("FLAIR lesion: classical threshold (no FLAIR U-Net "
                                       "shipped)")
    [_, unet] = plugin.check_models(FdopaPetSettings(segmentation="threshold",
                                                     flair_segmentation="unet",
                                                     flair_model_path=absent))
    assert not unet.ok and "not found" in unet.detail
    assert flair.name == "fdopa_flair_unet"


def test_unet_without_its_model_refuses_to_build(tmp_path: Path) -> None:
    settings = FdopaPetSettings(model_path=tmp_path / "none.onnx")
    with pytest.raises((AnalysisError, FileNotFoundError), match="not found"):
        plugin.build(settings)
