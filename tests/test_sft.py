"""The sft stage (Lab 2): LoRA instruction tuning lowers the loss; skipped, it costs nothing."""
import json
import shutil
import subprocess
import sys

from conftest import ENV, ROOT, run_script, set_params

ARGS = ["--data", "data/prepared", "--out", "models/sft", "--metrics", "metrics/sft.json", "--live",
        "metrics/sft_train"]


def test_sft_lowers_the_training_loss_and_reports_rouge(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"policy.adapter": "sft", "sft.max_steps": 20, "sft.learning_rate": 0.01, "sft.logging_steps": 1})
    proc = run_script(d, "sft.py", *ARGS)
    assert "{'loss'" not in proc.stdout + proc.stderr and "SFT: 100%" in proc.stderr  # a bar, not 20 printed dicts
    losses = [float(r.split("\t")[1]) for r in (d / "metrics/sft_train/plots/metrics/train/loss.tsv")
              .read_text().splitlines()[1:]]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    metrics = json.loads((d / "metrics/sft.json").read_text())
    assert metrics["enabled"] and metrics["steps"] == 20 and metrics["eval_samples"] == 8
    for k in ("rouge1", "rouge2", "rougeL"):
        assert metrics["rouge_gain"][k] == metrics["rouge_after"][k] - metrics["rouge_before"][k]
    assert (d / "models/sft/adapter_model.safetensors").exists()
    assert not (d / "models/.sft-trainer").exists()


def test_skipped_sft_is_a_constant_placeholder_that_loads_nothing(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    probe = (f"import runpy, sys; sys.argv = ['sft.py', *sys.argv[1:]]; "
             f"runpy.run_path({str(ROOT / 'stages/sft.py')!r}, run_name='__main__'); "
             "print('heavy imports:', sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe, *ARGS], cwd=d, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "heavy imports: []" in proc.stdout  # no model, no torch: the skip costs nothing noticeable
    first = (d / "models/sft/SKIPPED.md").read_text()
    set_params(d, {"sft.learning_rate": 0.5, "policy.model": "somewhere/else"})
    run_script(d, "sft.py", *ARGS)
    assert (d / "models/sft/SKIPPED.md").read_text() == first  # downstream hashes do not change
    assert json.loads((d / "metrics/sft.json").read_text()) == {"enabled": False}


def test_the_final_loss_is_logged_even_when_logging_steps_exceeds_the_run(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"policy.adapter": "sft", "sft.max_steps": 2, "sft.logging_steps": 50, "sft.eval_samples": 2})
    run_script(d, "sft.py", *ARGS)
    rows = (d / "metrics/sft_train/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss" and [r.split("\t")[0] for r in rows[1:]] == ["2"]
    assert float(rows[1].split("\t")[1]) > 0
