"""`wanq generate --preview-every N --decoder tiny` on a tiny pipeline (CPU): each preview kept beside the output as
OUT.preview_step<NNN>.mp4 and listed in the printed JSON, the video decoded by the tiny decoder at the job's frames
and size. (Random weights: the pictures mean nothing; counts, frames and sizes are what is asserted.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wanq.cli import main
from worker.export import probe_mp4
from worker.tiny_model import write_tiny_model


def test_generate_keeps_each_preview_beside_the_output_and_drafts_with_the_tiny_decoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_tiny_model(tmp_path / "tiny", "ti2v-5b")
    out = tmp_path / "clips" / "fox.mp4"
    args = ["generate", "--model-path", str(model), "--tiny", "--prompt", "a fox", "--device", "cpu"]
    main([*args, "--num-inference-steps", "4", "--preview-every", "2", "--decoder", "tiny", "-o", str(out)])
    printed = json.loads(capsys.readouterr().out)
    # 4 steps, a preview every 2: after step 2 only (none after the last: the video follows at once)
    kept = out.with_name("fox.preview_step002.mp4")
    assert printed["previews"] == [str(kept)] and printed["spec"]["decoder"] == "tiny"
    assert probe_mp4(kept)["frames"] == 5 and probe_mp4(kept)["size"] == (32, 32)  # 17 frames: 5 latent frames, half size
    made = probe_mp4(out)
    assert made["frames"] == 17 and made["size"] == (64, 64)


def test_generate_refuses_an_unknown_decoder_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["generate", "--model-path", "x", "--prompt", "a fox", "--decoder", "medium"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "argument --decoder: invalid choice: 'medium'" in err and "Traceback" not in err
