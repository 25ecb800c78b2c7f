"""The stage scripts' command line: parsed before the training stack loads, every default shown,
the recipe in each script's docstring as the recipes table says."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import build_parser, parse_config
from common.recipes import MODEL_NAMES, RECIPES, recipe_summary, script_name

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
    assert "common.training.checkpoints" in imported and "torch" not in imported
    assert out.returncode == 0 and "| BG | stage1_faceforensics |" in out.stdout


# Runs a command as `python -m` / `python script.py` would, in this process, then says whether
# torch got imported by the time the command exited (after --help or a flag error).
_RUN_AND_REPORT = """
import runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
print(f"exit={code} torch={'torch' in sys.modules}", file=sys.stderr)
"""
COMMANDS = ["common.extract", "common.evaluate", "common.ensemble", "common.status", "common.demo",
            "common.sample_data", *(script_name(m, s) for m in MODEL_NAMES for s in RECIPES)]


def _run_reporting(*argv: str) -> tuple[subprocess.CompletedProcess, str]:
    out = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT, *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    return out, out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help_before_importing_torch(command):
    out, report = _run_reporting(command, "--help")
    assert report == "exit=0 torch=False", (report, out.stderr[-2000:])
    assert out.stdout.startswith("usage: python ")


@pytest.mark.parametrize("argv", [("common.evaluate", "--dataset", "nope", "--data", "x"),
                                  ("common.ensemble", "predict"),
                                  ("common.ensemble", "fit", "--workers", "two", "--data", "x")])
def test_a_bad_flag_is_refused_before_importing_torch(argv):
    out, report = _run_reporting(*argv)
    assert report == "exit=2 torch=False", (report, out.stderr[-2000:])
    assert out.stderr.splitlines()[-2].startswith(f"python -m {argv[0]}")  # argparse's one error line


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


@pytest.mark.parametrize("stage", list(RECIPES))
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_script_docstrings_state_the_recipe_as_it_is(model, stage):
    script = ROOT / script_name(model, stage)
    doc = " ".join(ast.get_docstring(ast.parse(script.read_text())).split())
    assert recipe_summary(model, stage) in doc, f"{script.name}: its docstring's recipe is stale"
    tree = ast.parse(script.read_text())
    consts = {n.targets[0].id: n.value.value for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    assert consts == {"MODEL": model, "STAGE": stage}


def test_recipe_summary_follows_the_numbers(monkeypatch):
    import dataclasses

    import common.recipes as recipes

    changed = dataclasses.replace(RECIPES["stage2_celebdf"], lr=3e-5, focal_gamma=1.5)
    monkeypatch.setitem(recipes.RECIPES, "stage2_celebdf", changed)
    text = recipe_summary("cm", "stage2_celebdf")
    assert "lr 3e-5," in text and "gamma 1.5" in text
