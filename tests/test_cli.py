"""The stage scripts' command line: parsed before the training stack loads, every default shown."""
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import build_parser, parse_config
from common.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]


def _imports(*command: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", *command], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    return out, {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}


def test_help_does_not_import_torch():
    out, imported = _imports("train_tm_stage4_dfdc.py", "--help")
    assert out.returncode == 0
    assert "usual invocations" in out.stdout
    assert "common.cli" in imported
    assert not {"torch", "torchvision", "cv2", "av"} & imported


def test_status_table_does_not_import_torch(tmp_path):
    (tmp_path / "ck").mkdir()
    out, imported = _imports("-m", "common.status", "--checkpoint-dir", str(tmp_path / "ck"))
    assert "common.checkpoints" in imported and "torch" not in imported
    assert out.returncode == 0 and "| BG | stage1_faceforensics |" in out.stdout


@pytest.mark.parametrize("stage", list(RECIPES))
def test_every_flag_with_a_value_shows_its_default(stage):
    parser = build_parser("cm", stage)
    shown = {}
    for action in parser._actions:
        if action.nargs == 0 or action.required or action.default is None:
            continue  # switches, --data, and options whose absence means "not set"
        shown[action.dest] = " ".join(parser._get_formatter()._format_action(action).split())
        assert "(default: " in shown[action.dest], shown[action.dest]
    assert f"(default: {RECIPES[stage].epochs}, the recipe's)" in shown["epochs"]
    assert "(default: 32)" in shown["batch_size"]


def test_config_fields_come_from_the_parser_by_name():
    cfg = parse_config("av", "stage4_dfdc", ["--data", "/d", "--no-amp", "--no-status", "--seed", "7",
                                              "--chunks", "3,1"])
    assert (cfg.model, cfg.stage, cfg.data, cfg.seed) == ("av", "stage4_dfdc", Path("/d"), 7)
    assert cfg.amp is False and cfg.status_file is None and cfg.chunks == (3, 1)
    assert cfg.epochs == RECIPES["stage4_dfdc"].epochs and cfg.lr == RECIPES["stage4_dfdc"].lr


@pytest.mark.parametrize("flag, value, why", [("--chunks", "0,0,1", "repeated: 0"),
                                              ("--seed", "-1", "must be 0 or more"),
                                              ("--workers", "-2", "must be 0 or more")])
def test_bad_values_exit_2_naming_the_flag(flag, value, why, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config("rr", "stage4_dfdc", ["--data", "/d", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and why in err
