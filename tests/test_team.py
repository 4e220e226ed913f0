"""Team workflow: share artifacts through a DVC remote, run and compare experiments."""
import json
import time

from conftest import changed_stages, copy_repo, dvc, ran_stages, sh


def test_push_then_fresh_clone_pulls_everything_and_reproduces_nothing(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "alice")
    remote = tmp_path / "storage"
    dvc("remote", "modify", "local", "url", remote, cwd=repo)
    sh("git", "commit", "-qam", "team remote", cwd=repo)
    dvc("push", cwd=repo)
    assert any(remote.rglob("*"))

    clone = tmp_path / "bob"
    sh("git", "clone", "-q", repo, clone, cwd=tmp_path)
    assert not (clone / "models").exists()
    dvc("pull", cwd=clone)
    assert changed_stages(clone) == []
    out = dvc("repro", cwd=clone).stdout
    assert ran_stages(out) == []
    assert json.loads((clone / "metrics/summary.json").read_text()) == \
        json.loads((repo / "metrics/summary.json").read_text())

    from detoxkit.config import ComputeSettings
    from detoxkit.models import load_detoxified

    cpu = ComputeSettings(device="cpu", dtype="float32", compile_generation=False)
    model, tok, _ = load_detoxified(clone / "models/detoxified", cpu)
    out = model.generate(**tok(["Summarize the following conversation. A: hi"], return_tensors="pt"),
                         max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > 1


def exp_rows(repo):
    rows = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    out = {}
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                metrics = data.get("metrics", {}).get("metrics/summary.json", {}).get("data", {})
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                out[rev.get("name") or exp.get("name")] = (params, metrics)
    return out


def test_experiments_run_show_and_diff(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    out = dvc("exp", "run", "-n", "lr-high", "-S", "ppo.learning_rate=0.003", "-S", "ppo.init_kl_coef=0.05",
              cwd=repo).stdout
    assert ran_stages(out) == ["detox", "evaluate", "report"]
    rows = exp_rows(repo)
    params, metrics = rows["lr-high"]
    assert params["ppo"]["learning_rate"] == 0.003 and params["ppo"]["init_kl_coef"] == 0.05
    assert "toxicity_mean" in metrics["after"]
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)  # HEAD vs the experiment's workspace
    assert "after.toxicity_mean" in diff["metrics/summary.json"]
    tox = diff["metrics/summary.json"]["after.toxicity_mean"]
    assert tox["old"] == json.loads((ran / "metrics/summary.json").read_text())["after"]["toxicity_mean"]
    assert tox["new"] == json.loads((repo / "metrics/summary.json").read_text())["after"]["toxicity_mean"]
    plots = json.loads(dvc("plots", "diff", "HEAD", "--json", cwd=repo).stdout)["data"]
    curves = plots["PPO training curves"][0]["content"]["data"]["values"]
    assert {v["rev"] for v in curves} == {"HEAD", "workspace"}  # both runs' curves, side by side


def test_queued_sweep_runs_two_experiments(ran, tmp_path):
    repo = copy_repo(ran, tmp_path / "repo")
    for name, lr in (("q-a", "0.002"), ("q-b", "0.004")):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"ppo.learning_rate={lr}", cwd=repo)
    dvc("queue", "start", "-j", "1", cwd=repo)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc("queue", "status", cwd=repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    dvc("queue", "stop", "--kill", cwd=repo, check=False)
    assert "Failed" not in status, status + dvc("queue", "logs", "q-a", cwd=repo, check=False).stdout
    rows = exp_rows(repo)
    assert rows["q-a"][0]["ppo"]["learning_rate"] == 0.002 and rows["q-b"][0]["ppo"]["learning_rate"] == 0.004
    assert all("toxicity_mean" in rows[n][1]["after"] for n in ("q-a", "q-b"))
