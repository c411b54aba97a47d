"""Mistakes Hydra finds while composing the config (unknown key, unknown group option, an argument that is not
an override): one line naming the key, with a did-you-mean, and exit status 2, for every entry point."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers.processes import ROOT, run_cli
from hydra import compose, initialize_config_dir
from omegaconf.errors import ConfigKeyError

from deeplab.cli import composition_error, hydra_main, unset_keys
from deeplab.config import config_dir


def mistake(config_name: str, overrides: list[str]) -> Exception:
    """What Hydra raises composing the real configs/ with these overrides (as hydra.main composes them)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        except Exception as e:
            return e
    raise AssertionError(f"{overrides} composed without an error")


@pytest.mark.parametrize(
    ("config_name", "overrides", "message"),
    [
        ("train", ["experiment=tiny", "trainer.max_iter=5"], "trainer.max_iter: unknown key; did you mean trainer.max_iters?"),
        ("train", ["trainr.max_iters=5"], "trainr: unknown key; did you mean trainer?"),
        ("train", ["hydra.run.dirr=out"], "hydra.run.dirr: unknown key; did you mean hydra.run.dir?"),
        ("evaluate", ["checkpoint=a.pt", "eval.flp=true"], "eval.flp: unknown key; did you mean eval.flip?"),
        (
            "train",
            ["loss=focal", "loss.thresh=0.5"],
            "loss.thresh: unknown key; the keys of loss are name, aux_weight, pos_weight, gamma (thresh is a key of loss=ohem)",
        ),
        (
            "train",
            ["loss=lovasz", "loss.class_weights=[1,1,1,1]"],
            "loss.class_weights: unknown key; the keys of loss are name, aux_weight (class_weights is a key of "
            "loss=cross_entropy)",
        ),
        (
            "train",
            ["loss=nope"],
            "loss=nope: loss has no option nope (no configs/loss/nope.yaml); the options are cross_entropy, dice, "
            "focal, lovasz, ohem",
        ),
        (
            "train",
            ["loss=focall"],
            "loss=focall: loss has no option focall (no configs/loss/focall.yaml); did you mean loss=focal? "
            "(options: cross_entropy, dice, focal, lovasz, ohem)",
        ),
        (
            "evaluate",
            ["outputs/train/run/checkpoints/best.pt"],
            "outputs/train/run/checkpoints/best.pt: not a key=value override; did you mean "
            "checkpoint=outputs/train/run/checkpoints/best.pt?",
        ),
        ("evaluate", ["checkpoint"], "checkpoint: no value; give it as checkpoint=..."),
        ("predict", ["checkpoint=a.pt", "photos"], "photos: not a key=value override; did you mean input=photos?"),
        (
            "train",
            ["trainer.max_iters=[1"],
            "trainer.max_iters=[1: cannot parse this override (no viable alternative at input '[1'); quote a "
            "value that holds spaces, commas or brackets, e.g. key='a value' "
            "(see https://hydra.cc/docs/advanced/override_grammar/basic/)",
        ),
        (
            "train",
            ["trainer.max_iters=1,2"],
            "Ambiguous value for argument 'trainer.max_iters=1,2' 1. To use it as a list, use key=[value1,value2] "
            "2. To use it as string, quote the value: key='value1,value2' 3. To sweep over it, add --multirun to "
            "your command line",
        ),
        ("train", ["hydra.job.chdir=abc"], "hydra.job.chdir: Value 'abc' is not a valid bool (type str)"),
    ],
)  # fmt: skip
def test_a_composition_mistake_is_one_line_naming_the_key(config_name, overrides, message) -> None:
    unset = unset_keys(config_dir() / f"{config_name}.yaml", overrides)
    assert composition_error(mistake(config_name, overrides), unset, config_dir()) == message


def test_an_unknown_experiment_lists_the_experiments() -> None:
    message = composition_error(mistake("train", ["experiment=tny"]), [], config_dir())
    assert message is not None and message.startswith("experiment=tny: experiment has no option tny")
    assert "; did you mean experiment=tiny? (options: " in message and "quickstart" in message
    assert "\n" not in message


def test_other_errors_are_not_taken_for_composition_mistakes() -> None:
    assert composition_error(ValueError("a bug")) is None
    assert composition_error(KeyError("trainer")) is None


def entry_point(path: Path, name: str) -> ModuleType:
    """train.py / evaluate.py imported as a module (Hydra finds configs/ from the file, whatever the name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train.py", ["--cfg", "job", "trainr.max_iters=5"], "trainr: unknown key; did you mean trainer?"),
        ("evaluate.py", ["best.pt"], "best.pt: not a key=value override; did you mean checkpoint=best.pt?"),
        ("deeplab/predict.py", ["checkpoint=a.pt", "inpt=photos"], "inpt: unknown key; did you mean input?"),
        ("deeplab/export.py", ["checkpoint=a.pt", "formt=onnx"], "formt: unknown key; did you mean format?"),
        ("deeplab/export.py", ["checkpoint=a.pt", "hydra/launcher=slurm"], None),
    ],
)  # fmt: skip
def test_entry_points_report_composition_mistakes_in_one_line_with_exit_2(
    script, args, message, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    if script.startswith("deeplab/"):
        module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    else:
        module = entry_point(ROOT / script, f"entry_{Path(script).stem}")
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    if message is None:  # a Hydra group's option that is not installed: named with its options
        assert err.startswith("error: hydra/launcher=slurm: hydra/launcher has no option slurm; is the Hydra")
    else:
        assert err == f"error: {message}\n"
    assert "HYDRA_FULL_ERROR" not in os.environ  # set only while Hydra runs


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys) -> None:
    """`python -m deeplab.export` (and predict, evaluate) stopped by Ctrl-C: no traceback."""
    import deeplab.deploy.export as export_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export", interrupted)
    monkeypatch.setattr(sys, "argv", ["deeplab/export.py", "checkpoint=a.pt", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module("deeplab.export").main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C): no file was left half-written\n"


def test_data_commands_report_mistakes_in_one_line_with_exit_2(capsys) -> None:
    from deeplab.data import check, prepare

    assert check.main(["experiment=tiny", "trainer.max_iter=5"]) == 2
    assert (
        capsys.readouterr().err == "error: trainer.max_iter: unknown key; did you mean trainer.max_iters?\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["voc", "--rot", "data"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: unrecognized arguments: --rot data; did you mean --root? (see python -m deeplab.data.prepare --help)\n"
    )


def test_what_the_task_raises_is_not_reported_as_a_composition_mistake(tmp_path, monkeypatch) -> None:
    """An omegaconf error inside the run (a bug) keeps its traceback; a run that works returns its value."""
    seen = []

    @hydra_main(config_path="../configs", config_name="export")
    def app(cfg):
        seen.append(cfg.checkpoint)
        assert (
            "HYDRA_FULL_ERROR" not in os.environ
        )  # the switch that composition sets does not reach the task
        if cfg.format == "exported_program":
            raise ConfigKeyError("a bug in the code")
        return 1.5

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    base = ["app", "checkpoint=a.pt", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", [*base, f"hydra.run.dir={tmp_path / 'a'}"])
    app()
    monkeypatch.setattr(sys, "argv", [*base, "format=exported_program", f"hydra.run.dir={tmp_path / 'b'}"])
    with pytest.raises(ConfigKeyError, match="a bug in the code"):
        app()
    assert seen == ["a.pt", "a.pt"]
    assert "HYDRA_FULL_ERROR" not in os.environ


@pytest.mark.parametrize("multirun", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_train_py_unknown_key_is_one_line_and_exit_2(multirun: bool, tmp_path) -> None:
    """The real process, run and sweep: nothing of Hydra's five lines or its advice to use `+`."""
    sweep = ["-m", "trainer.max_iters=1,2"] if multirun else []
    proc = run_cli(
        "train.py", *sweep, "experiment=tiny", "trainer.max_iter=5", f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: trainer.max_iter: unknown key; did you mean trainer.max_iters?\n"
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
