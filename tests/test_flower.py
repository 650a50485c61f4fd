"""The Flower app end to end on a loopback federation; the package's import; and the helpers that the
tests of its parts (``test_flower_<module>.py``, one per module of :mod:`pfedest.flower`) share.

The network tests start ``flower-superlink --insecure`` and two ``flower-supernode`` processes on
127.0.0.1 (free ports, state under ``tmp_path``), run one 4-round app with ``flwr run`` in which
node 1 is killed in the middle of round 3 and restarted, and then check what the run left behind:
which keys crossed the network, whether the model improved, whether the nodes' personal parameters
differ, whether the run equals an in-process replay with :func:`pfedest.core.rounds.run_round`, and
whether the killed node resumed from its file. They skip without ``flwr``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pfedest import PartialPersonalizedClassifier
from pfedest.core.algorithms import ALGORITHMS
from pfedest.core.engine import make_engine
from pfedest.core.model import make_loss
from pfedest.core.rounds import run_round
from pfedest.core.sampling import RoundKeys
from pfedest.core.server import WeightedAverage
from pfedest.datasets import make_shifted_clients
from pfedest.flower import RunSettings, export_app, load_result, personal_metrics, read_model

CPU = torch.device("cpu")
N_NODES = 2
VICTIM = 1            # the node killed in the middle of STALL_ROUND and restarted
STALL_ROUND = 3
N_ROUNDS = 4
ROUND_TIMEOUT = 300.0
STRAGGLER_WAIT = 20.0  # a round ends this long after its first reply (nodes answer within seconds of each other)


# ------------------------------------------------- helpers shared with the tests of the modules
def small_federation():
    return make_shifted_clients(n_clients=N_NODES, n_samples_per_client=(30, 50), n_features=5, n_classes=3,
                                random_state=0)


def small_estimator(**params):
    base = dict(hidden_layer_sizes=(8,), lr=0.2, batch_size=8, personal_steps=3, shared_steps=5, random_state=0)
    return PartialPersonalizedClassifier(**{**base, **params})


def flower_message(content, message_type="train", dst=11):
    from flwr.app import Message, Metadata

    metadata = Metadata(run_id=7, message_id="m1", src_node_id=1, dst_node_id=dst, reply_to_message_id="",
                        group_id="", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=content, metadata=metadata)


def pin_server_identity(monkeypatch):
    """flwr >= 1.42 makes a server's Message with the run and node ids of the ServerApp process: pin
    them to those of :func:`flower_message`, so that a strategy runs in this process."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # older flwr: nothing to pin
        return
    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def flower_context(node_config, run_config, state=None):
    from flwr.app import Context, RecordDict

    return Context(run_id=7, node_id=11, node_config=node_config, state=state or RecordDict(), run_config=run_config)


#: The public names of pfedest.flower when it was one module: each still imports from the package.
PUBLIC_NAMES = ("FLWR_REQUIREMENT", "MODEL_FORMAT", "MODEL_FILE", "ARRAYS_KEY", "METRICS_KEY", "CONFIG_KEY",
                "STATE_KEY", "SOURCES", "logger", "RunSettings", "write_model", "ModelSpec", "read_model",
                "local_round", "personal_metrics", "NodeStore", "train_handler", "evaluate_handler",
                "query_handler", "client_app", "server_main", "server_app", "run_config_for", "export_app",
                "load_result")


# ------------------------------------------------------------------------------ the package
def test_import_and_model_files_work_without_flower(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["flwr"] = None  # any import of flwr now fails
        import pfedest, pfedest.flower
        from pfedest import PartialPersonalizedClassifier
        from pfedest.flower import *
        missing = [n for n in {PUBLIC_NAMES!r} if not hasattr(pfedest.flower, n)]
        assert not missing, missing
        est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), random_state=0)
        pfedest.flower.export_app(est, {str(tmp_path / 'app')!r}, classes=[0, 1], n_features=3)
        for needs_flwr in (lambda: pfedest.flower.client_app("."), lambda: pfedest.flower.PersonalizedFedAvg):
            try:
                needs_flwr()
            except ImportError:
                print("needs flwr")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("needs flwr") == 2
    assert (tmp_path / "app" / "pfedest_app" / "model.json").is_file()


def test_the_strategy_is_a_name_of_the_package_once_flower_is_there():
    pytest.importorskip("flwr")
    import pfedest.flower as pf
    from pfedest.flower.strategy import PersonalizedFedAvg

    assert pf.PersonalizedFedAvg is PersonalizedFedAvg and pf.PersonalizedFedAvg.__module__ == "pfedest.flower.strategy"
    with pytest.raises(AttributeError, match="no attribute 'PersonalizedFedAv'"):
        pf.PersonalizedFedAv


# ------------------------------------------------------------------- a real Flower federation
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"gave up after {timeout} s waiting for {what}")


class Federation:
    """One SuperLink and its SuperNodes on 127.0.0.1, every process in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(root / "flwr-home"),
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}
        (root / "flwr-home").mkdir(parents=True)
        (root / "flwr-home" / "config.toml").write_text(textwrap.dedent(f"""\
            [superlink]
            default = "pfedest-test"

            [superlink.pfedest-test]
            address = "127.0.0.1:{self.port}"
            insecure = true
            """))
        (root / "logs").mkdir()
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name, args):
        log = open(self.root / "logs" / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(args, env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()
        return self.procs[name]

    def start_superlink(self):
        self._start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                  "--host", "127.0.0.1", "--port", str(self.port)])

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        _wait_for(listening, 90, "the SuperLink to listen")

    def start_node(self, partition: int, **extra):
        config = {"partition-id": partition, "data-path": str(self.root / f"node{partition}.npz"),
                  "state-dir": str(self.root / f"state{partition}"), **extra}
        node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        return self._start(f"node{partition}", [
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(_free_port()), "--node-config", node_config])

    def kill(self, name, sig=signal.SIGKILL):
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self):
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


STALL_CLIENT = '''"""The exported ClientApp plus a test mod: the node with node config stall-round=R hangs in
round R's training (writing a marker first), so that the test can kill it mid-round."""

import time
from pathlib import Path

from pfedest.flower import client_app


def stall(msg, context, call_next):
    cfg = msg.content.config_records.get("config")
    if (msg.metadata.message_type == "train" and cfg is not None
            and context.node_config.get("stall-round") == cfg["server-round"]):
        Path(context.node_config["state-dir"], "stalled").write_text(str(cfg["server-round"]))
        time.sleep(600)
    return call_next(msg, context)


app = client_app(Path(__file__).parent, mods=[stall])
'''


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    """Run the 4-round app once; kill node 1 in round 3 and restart it. Yields what the tests check."""
    pytest.importorskip("flwr")
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")
    root = tmp_path_factory.mktemp("flower")
    X, y, c = small_federation()
    for p in range(N_NODES):
        np.savez(root / f"node{p}.npz", X=X[c == p], y=y[c == p])
    app = export_app(small_estimator(n_rounds=N_ROUNDS), root / "app", classes=np.unique(y), n_features=5,
                     min_nodes=N_NODES, round_timeout=ROUND_TIMEOUT, straggler_wait=STRAGGLER_WAIT,
                     node_wait=120.0, evaluate_every=-1,
                     poll_interval=0.5, keep_rounds=True, result_dir=str(root / "result"))
    (app / "pfedest_app" / "client_app.py").write_text(STALL_CLIENT)
    fed = Federation(root)
    tic = time.monotonic()
    timeline = {}
    try:
        fed.start_superlink()
        for p in range(N_NODES):
            fed.start_node(p, **({"stall-round": STALL_ROUND} if p == VICTIM else {}))
        timeline["federation up"] = time.monotonic() - tic
        with open(root / "logs" / "flwr-run.log", "wb") as log:
            run = subprocess.Popen(["flwr", "run", str(app), "pfedest-test", "--stream"], env=fed.env, cwd=root,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            fed.procs["flwr-run"] = run
            marker = root / f"state{VICTIM}" / "stalled"
            _wait_for(lambda: marker.exists() or run.poll() is not None, 300, f"node {VICTIM} to stall")
            assert marker.exists(), (root / "logs" / "flwr-run.log").read_text()[-3000:]
            timeline["kill"] = time.monotonic() - tic
            fed.kill(f"node{VICTIM}")  # SIGKILL to the node and its ClientApp: it dies mid-round
            fed.start_node(VICTIM)      # the same node restarted, without the stall
            run.wait(timeout=400)
            fed.procs.pop("flwr-run")
        timeline["run done"] = time.monotonic() - tic
        summary = json.loads((root / "result" / "rounds.json").read_text())
        yield {"root": root, "app": app, "rc": run.returncode, "summary": summary, "data": (X, y, c),
               "spec": read_model(app / "pfedest_app" / "model.json"), "timeline": timeline,
               "log": (root / "logs" / "flwr-run.log").read_text()}
    finally:
        fed.stop()
        print(f"\nFlower loopback run: {json.dumps({k: round(v, 1) for k, v in timeline.items()})}, "
              f"with teardown {time.monotonic() - tic:.1f} s")


def _npz(path):
    with np.load(path) as data:
        return {k: torch.from_numpy(data[k].copy()) for k in data.files}


def _node_log(run, partition):
    path = run["root"] / f"state{partition}" / f"pfedest-{run['spec'].app_id}.log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _personal(run, partition):
    from pfedest.flower import NodeStore

    return NodeStore(run["root"] / f"state{partition}", run["spec"].app_id, partition).read()


def _replay(run, upto):
    """The run's rounds 1..upto in-process: each round, every node that answered runs
    pfedest.core.rounds.run_round on its rows of the whole federation with RoundKeys(seed, round), and the server
    averages with WeightedAverage; returns the shared and the stacked personal parameters."""
    X, y, c = run["data"]
    spec = run["spec"]
    settings = RunSettings(**run["summary"]["settings"])
    template = spec.template()
    order = np.argsort(c, kind="stable")
    counts = np.bincount(c)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    codes = np.searchsorted(template.classes_, y[order])
    loss = make_loss(template.module_, dict(template.module_.named_buffers()), torch.as_tensor(X[order]),
                     torch.as_tensor(codes))
    engine = make_engine("loop", loss, spec.shared)
    shared = {k: v.clone() for k, v in spec.shared.items()}
    personal = {k: v[None].repeat(N_NODES, *([1] * v.dim())).clone() for k, v in spec.personal.items()}
    for record in run["summary"]["rounds"][:upto]:
        answered = sorted(record["clients"])
        outs = []
        for p in answered:
            out, _ = run_round(algorithm=ALGORITHMS[settings.algorithm], engine=engine, shared=shared,
                               personal_state=personal, counts=counts, offsets=offsets, sampled=np.array([p]),
                               rng=RoundKeys(settings.seed, record["round"]), batch_size=settings.batch_size,
                               steps=settings.steps(), lr=settings.step_sizes(), server_lr=1.0, chunk_size=None,
                               device=CPU)
            outs.append(out)
        average = WeightedAverage()
        average.add({k: torch.stack([o[k] for o in outs]) for k in shared},
                    torch.tensor(counts[answered], dtype=torch.float32))
        shared = average.step(shared, settings.server_lr)
    return shared, personal


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_flower_run_finishes_every_round(flower_run):
    assert flower_run["rc"] == 0, flower_run["log"][-3000:]
    rounds = flower_run["summary"]["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, N_ROUNDS + 1))
    assert "finished" in flower_run["summary"]


@pytest.mark.slow
def test_only_shared_parameters_crossed_the_network(flower_run):
    spec = flower_run["spec"]
    shared_names, personal_names = sorted(spec.shared), set(spec.personal)
    replies = [r for rnd in flower_run["summary"]["rounds"] for r in rnd["replies"]]
    assert len(replies) >= N_NODES * (N_ROUNDS - 1)
    for reply in replies:
        assert reply["keys"] == shared_names and not personal_names & set(reply["keys"])
        assert reply["accepted"], reply
    # Sizes: the serialized shared arrays only (the personal head would add to every reply).
    assert len({r["bytes"] for r in replies}) == 1
    # What the server saved is the shared part too.
    assert sorted(_npz(flower_run["root"] / "result" / "shared.npz")) == shared_names


@pytest.mark.slow
def test_the_shared_model_improved(flower_run):
    X, y, c = flower_run["data"]
    spec = flower_run["spec"]
    final = _npz(flower_run["root"] / "result" / "shared.npz")
    template = spec.template()
    before, after = [], []
    for p in range(N_NODES):
        personal = _personal(flower_run, p)
        mine = c == p
        before.append(personal_metrics(template, X[mine], y[mine], spec.shared, personal)["loss"])
        after.append(personal_metrics(template, X[mine], y[mine], final, personal)["loss"])
    # With each node's final personal part, the trained shared part fits better than the initial one.
    assert np.mean(after) < np.mean(before) - 0.05, (before, after)
    losses = [r["train_loss"] for r in flower_run["summary"]["rounds"]]
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_each_node_has_its_own_personal_parameters(flower_run):
    spec = flower_run["spec"]
    personal = [_personal(flower_run, p) for p in range(N_NODES)]
    for p in range(N_NODES):
        assert _max_diff(personal[p], spec.personal) > 1e-3  # trained
        for q in range(p):
            assert _max_diff(personal[p], personal[q]) > 1e-3


@pytest.mark.slow
def test_flower_run_equals_the_in_process_simulator(flower_run):
    full = [r for r in flower_run["summary"]["rounds"] if r["round"] < STALL_ROUND]
    assert all(sorted(r["clients"]) == list(range(N_NODES)) for r in full)  # full participation
    shared_3, _ = _replay(flower_run, STALL_ROUND - 1)
    flower_3 = _npz(flower_run["root"] / "result" / f"shared-round-{STALL_ROUND - 1}.npz")
    shared_end, personal_end = _replay(flower_run, N_ROUNDS)
    flower_end = _npz(flower_run["root"] / "result" / "shared.npz")
    personal_diff = max(_max_diff(_personal(flower_run, p), {k: v[p] for k, v in personal_end.items()})
                        for p in range(N_NODES))
    print(f"\nFlower vs in-process run_round: shared max|diff| after round {STALL_ROUND - 1} (all nodes) "
          f"{_max_diff(flower_3, shared_3):.2e}, after round {N_ROUNDS} (with the fault) "
          f"{_max_diff(flower_end, shared_end):.2e}; personal max|diff| {personal_diff:.2e}; "
          f"shared max|value| {max(float(v.abs().max()) for v in flower_end.values()):.2f}")
    assert _max_diff(flower_3, shared_3) < 1e-5
    assert _max_diff(flower_end, shared_end) < 1e-5
    assert personal_diff < 1e-5


@pytest.mark.slow
def test_a_killed_node_does_not_stop_or_corrupt_the_round(flower_run):
    rounds = {r["round"]: r for r in flower_run["summary"]["rounds"]}
    fault = rounds[STALL_ROUND]
    assert sorted(fault["clients"]) == [p for p in range(N_NODES) if p != VICTIM]
    assert fault["n_accepted"] == N_NODES - 1 and len(fault["missing"]) + len(fault["failures"]) >= 1
    final = _npz(flower_run["root"] / "result" / "shared.npz")
    assert all(torch.isfinite(v).all() for v in final.values())
    # The restarted node took part again after the fault.
    assert VICTIM in rounds[N_ROUNDS]["clients"], rounds[N_ROUNDS]


@pytest.mark.slow
def test_a_restarted_node_resumes_with_its_stored_personal_parameters(flower_run):
    log = _node_log(flower_run, VICTIM)
    pids = [e["pid"] for e in log]
    # Killed before finishing STALL_ROUND; back (a new process, an empty context.state) for the last.
    assert [e["round"] for e in log] == list(range(1, STALL_ROUND)) + [N_ROUNDS]
    assert [e["source"] for e in log] == ["init"] + ["state"] * (STALL_ROUND - 2) + ["disk"]
    assert log[-1]["start"] == log[-2]["end"]  # exactly where its last finished round left it
    survivors = _node_log(flower_run, 0)
    assert [e["source"] for e in survivors] == ["init"] + ["state"] * (N_ROUNDS - 1)
    assert len(set(pids)) == len(pids)  # every message ran in a fresh ClientApp process


@pytest.mark.slow
def test_load_result_predicts_with_each_nodes_personal_model(flower_run):
    X, y, c = flower_run["data"]
    root = flower_run["root"]
    est = load_result(root / "result", [root / f"state{p}" for p in range(N_NODES)])
    assert est.clients_.tolist() == list(range(N_NODES)) and len(est.history_) == N_ROUNDS
    final = _npz(root / "result" / "shared.npz")
    for p in range(N_NODES):
        mine = c == p
        expected = personal_metrics(est, X[mine], y[mine], final, _personal(flower_run, p))["accuracy"]
        assert est.score(X[mine], y[mine], client_ids=c[mine]) == pytest.approx(expected)
