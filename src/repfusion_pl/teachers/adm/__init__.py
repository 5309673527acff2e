"""OpenAI guided-diffusion (ADM) checkpoints as diffusers teachers: configs, key layout, conversion."""

from repfusion_pl.teachers.adm.config import (
    ADM_PRESETS,
    AdmConfig,
    AdmConversionError,
    diffusers_unet_for,
    scheduler_for,
)
from repfusion_pl.teachers.adm.convert import convert_adm, convert_adm_command, convert_adm_state_dict
from repfusion_pl.teachers.adm.layout import ReportRow, adm_params, expected_adm_shapes

__all__ = [
    "ADM_PRESETS",
    "AdmConfig",
    "AdmConversionError",
    "ReportRow",
    "adm_params",
    "convert_adm",
    "convert_adm_command",
    "convert_adm_state_dict",
    "diffusers_unet_for",
    "expected_adm_shapes",
    "scheduler_for",
]
