"""scripts/recipe_study.py: every row is a valid config, and the report ranks rows and states the spread."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from adeblur.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recipe_study", ROOT / "scripts" / "recipe_study.py")
study = importlib.util.module_from_spec(spec)
sys.modules["recipe_study"] = study
spec.loader.exec_module(study)


@pytest.mark.parametrize("row", list(study.ROWS))
def test_every_row_is_a_valid_config(row):
    config = load_config(study.BASE_CONFIG, study.BASE + study.ROWS[row][1] + ["steps=10"])
    assert config.model.name == "nafnet-lite" and config.threads == 1


def test_report_ranks_by_mean_gain_and_shows_the_seed_spread(tmp_path):
    def entry(row, seed, gain_w):
        curve = [{"step": 0, "cpu_seconds": 0.0, "psnr": 20.0, "psnr_w": 18.0},
                 {"step": 10, "cpu_seconds": 4.0, "psnr": 20.5, "psnr_w": 18.0 + gain_w}]  # fmt: skip
        return {"row": row, "seed": seed, "description": study.ROWS[row][0], "steps": 10, "params": 1_970_000,
                "cpu_seconds_per_step": 0.4, "input_psnr": 20.0, "input_psnr_w": 18.0, "gain_psnr": 0.5,
                "gain_psnr_w": gain_w, "curve": curve}  # fmt: skip

    results = [entry("base", 0, 0.2), entry("base", 1, 0.4), entry("ema", 0, 0.5)]
    table = study.report(results, tmp_path / "curves.png").splitlines()
    assert table[2].startswith("| ema |") and table[3].startswith("| base |")
    assert "+0.300 (±0.100)" in table[3] and "0,1" in table[3]
    assert (tmp_path / "curves.png").stat().st_size > 0
