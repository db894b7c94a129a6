"""The demo job end to end at a small scale: simulate → bin → deconvolve → compare with truth."""

from __future__ import annotations

import json

import pytest

from comptonsky.cli import main

pytestmark = pytest.mark.slow  # end-to-end


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    status = main(["demo", "--output", str(out), "--nside", "4", "--phi-bin", "30",
                   "--iterations", "8", "--no-progress"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 8
    assert summary["counts"]["source"] > 1e4
    for name in ("model.png", "truth.png", "residual.png", "results/convergence.png",
                 "results/model_itr8.hdf5", "results/results.fits"):
        assert (out / name).exists(), name
    regions = summary["regions"]
    injected = regions["all_sky"]["injected"]
    assert abs(injected - 2.83e-3) / 2.83e-3 < 0.02  # the DC2 thin-disk total line flux
    # a coarse (nside 4, 30° Phi bins) 8-iteration fit still recovers the total flux
    assert 0.7 < regions["all_sky"]["ratio"] < 1.3
    # the albedo is simulated at the DC2 background level and fitted with its own template
    assert summary["counts"]["albedo"] > 4 * summary["counts"]["source"]
    assert abs(summary["background_normalization"]["albedo"] - 1.0) < 0.15
    out_text = capsys.readouterr().out
    assert "bulge" in out_text and "normalisation" in out_text
