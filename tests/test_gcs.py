"""Workdirs on ``gs://``, against the session's Cloud Storage emulator (`conftest.gcs`): every file of a run on the
bucket, the lock as a lease, the one-line errors, and never a local directory named ``gs:``."""

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from conftest import REPO
from test_faults import assert_bitwise_equal, stop_inside_a_save
from test_train import SMALL, final_params

from deconv_jax import config as config_lib
from deconv_jax import metric_writers, storage, workdir
from deconv_jax.workdir import RunDir


@pytest.fixture
def bucket(gcs):
  """A new, empty bucket of the emulator: its URL."""
  return gcs.bucket(f"b-{uuid.uuid4().hex[:12]}")


def command(module, *args, env, cwd=REPO, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


# ---------------------------------------------------------------- URLs, the extra, the bucket, credentials


@pytest.mark.parametrize(
  "url, says",
  [
    ("gs:/bucket/run", "not a gs:// URL of a bucket and a path: write gs://BUCKET/PATH"),
    ("gs:bucket/run", "not a gs:// URL of a bucket and a path: write gs://BUCKET/PATH"),
    ("gs://Bucket/run", "not a gs:// URL of a bucket and a path"),
    ("gs://bucket//run", "not a gs:// URL of a bucket and a path"),
    ("gs://", "not a gs:// URL of a bucket and a path"),
    ("s3://bucket/run", "'s3' is not a place this code writes to: give a local path, or gs://BUCKET/PATH"),
  ],
)
def test_a_malformed_url_is_refused_in_one_line_before_anything_is_written(url, says, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(storage.StorageError) as e:
    RunDir(url)
  assert str(e.value).startswith(f"--workdir={url}: {says}") and "\n" not in str(e.value)
  assert os.listdir(tmp_path) == []


def test_a_classifier_run_named_by_a_config_key_is_checked_under_that_key():
  from deconv_jax import measure
  from deconv_jax.tasks import inversion

  with pytest.raises(storage.StorageError, match=r"^config\.measure\.classifier_workdir=gs:/x: not a gs:// URL"):
    measure.Featurizer("gs:/x")
  with pytest.raises(storage.StorageError, match=r"^config\.inversion\.classifier_workdir=gs:/x: not a gs:// URL"):
    inversion.load_classifier("gs:/x", (28, 28, 1))


def test_local_paths_pass_the_check(tmp_path):
  for path in (str(tmp_path), "workdirs/run", "exp:lr=0.1", "C:/runs/a"):
    storage.check(path, "--workdir")


def test_without_the_gcs_extra_a_gs_url_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # what `import gcsfs` meets where it is not installed
  with pytest.raises(storage.StorageError) as e:
    RunDir("gs://bucket/run")
  assert str(e.value) == (
    "--workdir=gs://bucket/run: gs:// paths need the [gcs] extra (gcsfs is not installed): "
    "pip install 'deconv_jax[gcs]'"
  )


def test_a_run_on_a_bucket_names_its_files_under_its_url():
  pytest.importorskip("gcsfs", reason="the [gcs] extra is not installed")
  run = RunDir("gs://bucket/runs/a")
  assert (run.config, run.checkpoints) == ("gs://bucket/runs/a/config.json", "gs://bucket/runs/a/checkpoints")
  assert run.figure("deconvnet_act1") == "gs://bucket/runs/a/deconvnet_act1.png"


def test_a_bucket_that_does_not_exist_is_one_line_and_is_not_created(gcs):
  with pytest.raises(storage.StorageError) as e:
    RunDir("gs://no-such-bucket/run").read()
  assert str(e.value) == (
    "--workdir=gs://no-such-bucket/run: bucket no-such-bucket does not exist: create it "
    "(gcloud storage buckets create gs://no-such-bucket) or fix the URL"
  )
  from google.cloud import storage as gcs_client

  assert gcs_client.Client().lookup_bucket("no-such-bucket") is None


@pytest.mark.slow
def test_the_commands_say_each_storage_fault_in_one_line_and_write_no_local_gs_directory(gcs, bucket, tmp_path):
  """Through the commands, from a directory where a local ``gs:`` would appear: a malformed URL, a missing
  bucket, and no credentials (no emulator, no key file, not on Google Cloud) are each one line and exit 2."""
  no_credentials = {
    k: v for k, v in gcs.env.items() if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
  }
  no_credentials.update(HOME=str(tmp_path / "home"), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  cases = [
    ("deconv_jax.train", "gs:/b/run", gcs.env, "--workdir=gs:/b/run: not a gs:// URL of a bucket and a path"),
    ("deconv_jax.train", "gs://no-bucket-here/run", gcs.env, "bucket no-bucket-here does not exist"),
    ("deconv_jax.evaluate", "gs://no-bucket-here/run", gcs.env, "bucket no-bucket-here does not exist"),
    ("deconv_jax.train", f"{bucket}/run", no_credentials, "no Google Cloud credentials were found"),
  ]
  for module, url, env, says in cases:
    result = command(module, f"--workdir={url}", "--config.num_train_steps=2", env=env, cwd=cwd, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --workdir={url}: ") and says in lines[0], lines[0]
  assert os.listdir(cwd) == [] and storage.files_under(bucket) == []


# ---------------------------------------------------------------- files


def test_config_json_round_trips_and_a_damaged_one_is_one_line(bucket):
  run = RunDir(f"{bucket}/run")
  c = config_lib.base()
  c.num_train_steps = 7
  config_lib.save_json(c, run.config)
  assert run.saved_config().num_train_steps == 7 and storage.files_under(run.path) == ["config.json"]
  storage.write_text(run.config, '{"num_train_steps": 7, "batch')
  with pytest.raises(config_lib.ConfigError) as e:
    run.saved_config()
  assert str(e.value).startswith(f"--workdir={run.path}: config.json is damaged (")
  assert str(e.value).endswith("): restore it from a copy, or use a new --workdir")


def test_metrics_are_rewritten_whole_and_a_torn_tail_is_dropped_in_one_line(bucket):
  run, said = RunDir(f"{bucket}/run"), []
  writer = metric_writers.MetricWriter(run.metrics, run.tensorboard, run.samples)
  writer.write(10, "train", {"loss": 1.5})
  writer.write(20, "train", {"loss": 1.25})
  assert metric_writers.read_records(run.metrics) == (
    [{"step": 10, "split": "train", "loss": 1.5}, {"step": 20, "split": "train", "loss": 1.25}],
    0,
  )
  path = writer.write_images(20, "samples", np.full((2, 4, 4, 1), 0.5, np.float32))
  writer.close()
  assert path == f"{run.samples}/samples_000020.png" and storage.read_bytes(path)[:4] == b"\x89PNG"
  assert any(f.startswith("tensorboard/events.out.tfevents.") for f in storage.files_under(run.path))
  # A run killed while the file was written whole cannot tear it on gs://; a torn tail (a file written by a
  # local run, then copied) is still dropped at the next start, with one line, and the rest kept.
  storage.write_text(run.metrics, storage.read_text(run.metrics) + '{"step": 30, "spl')
  writer = metric_writers.MetricWriter(run.metrics, run.tensorboard, run.samples, resume_step=20, log=said.append)
  writer.write(30, "train", {"loss": 1.0})
  writer.close()
  assert said == [f"{run.metrics}: dropped 1 line(s) that are not a whole record (a run killed while writing it)"]
  assert [r["step"] for r in metric_writers.read_records(run.metrics)[0]] == [10, 20, 30]


def test_a_listing_shows_what_another_client_wrote_since_the_last_listing(bucket):
  """orbax writes checkpoints through tensorstore and other hosts write too: a listing read once must not be kept."""
  from google.cloud import storage as gcs_client

  storage.write_text(f"{bucket}/steps/10/a", "")
  assert storage.listdir(f"{bucket}/steps") == ["10"]
  blob = gcs_client.Client().bucket(bucket.removeprefix("gs://")).blob("steps/20/a")
  blob.upload_from_string("")
  assert storage.listdir(f"{bucket}/steps") == ["10", "20"]
  blob.delete()
  assert storage.listdir(f"{bucket}/steps") == ["10"]


def test_move_moves_a_directory_tree(bucket):
  storage.write_text(f"{bucket}/a/x.txt", "x")
  storage.write_text(f"{bucket}/a/sub/y.txt", "y")
  storage.move(f"{bucket}/a", f"{bucket}/elsewhere/b")
  assert storage.files_under(bucket) == ["elsewhere/b/sub/y.txt", "elsewhere/b/x.txt"]
  assert storage.read_text(f"{bucket}/elsewhere/b/sub/y.txt") == "y"


# ---------------------------------------------------------------- the lock


def refused(holder):
  return config_lib.ConfigError(f"in use ({holder})")


def test_the_lock_is_one_runs_until_released(bucket, monkeypatch):
  monkeypatch.setenv(workdir.LEASE_S_VARIABLE, "1.5")
  path = f"{bucket}/run"
  held = workdir.Lock(path)
  held_by = json.loads(storage.read_text(RunDir(path).lock))["holder"]
  assert held_by.startswith(f"pid {os.getpid()} on ")
  time.sleep(2.5)  # longer than the lease: the holder's renewals keep it
  with pytest.raises(config_lib.ConfigError) as e:
    workdir.Lock(path)
  assert str(e.value).startswith(f"--workdir={path} is in use by another run ({held_by}; its lease was renewed ")
  assert str(e.value).endswith("): wait for it to end, or use another --workdir")
  held.release()
  assert not storage.exists(RunDir(path).lock)
  workdir.Lock(path).release()


def test_a_bucket_these_credentials_may_not_write_is_one_line(bucket, monkeypatch):
  from google.api_core import exceptions
  from google.cloud.storage import Blob

  def forbidden(*args, **kwargs):
    raise exceptions.Forbidden("caller does not have storage.objects.create access")

  monkeypatch.setattr(Blob, "upload_from_string", forbidden)
  with pytest.raises(storage.StorageError) as e:
    workdir.Lock(f"{bucket}/run")
  assert str(e.value) == (
    f"--workdir={bucket}/run: {bucket}/run/.lock cannot be written (Forbidden: 403 caller does not have "
    "storage.objects.create access)"
  )


def test_a_lock_that_is_not_renewed_lapses_and_is_taken_over(bucket):
  url, said = f"{bucket}/run/.lock", []
  storage.write_text(url, json.dumps({"holder": "pid 1 on a-killed-host since then", "lease_s": 1.0}))
  with pytest.raises(config_lib.ConfigError, match=r"in use \(pid 1 on a-killed-host since then; its lease"):
    storage.Lease(url, "second", 1.0, refused, said.append)
  time.sleep(1.5)
  lease = storage.Lease(url, "second", 1.0, refused, said.append)
  assert said[0].startswith("taking over the lock of pid 1 on a-killed-host since then: not renewed for ")
  assert json.loads(storage.read_text(url))["holder"] == "second"
  lease.release()
  assert not storage.exists(url)


# ---------------------------------------------------------------- a run, killed, resumed and read back

# Saves every 20 steps; constant learning rate, augmented (its draws resume too): long enough to be killed in a save.
RUN = [*SMALL, "--config.num_train_steps=300", "--config.checkpoint_every_steps=20", "--config.log_every_steps=20"]
RUN += ["--config.eval_every_steps=300", "--config.optimizer.schedule=constant", "--config.augment.max_shift=2"]
LEASE_S = 10


def start(workdir, env):
  cmd = [sys.executable, "-m", "deconv_jax.train", *RUN, f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def partial_saves(checkpoints):
  """Steps being saved (or cut short): on gs:// orbax writes ``<step>/`` in place and ``commit_success.txt`` last."""
  return [s for s in storage.listdir(checkpoints) if not storage.exists(f"{checkpoints}/{s}/commit_success.txt")]


def saving(checkpoints):
  """Whether a step newer than every complete one is being written (not an old one being deleted)."""
  partial = partial_saves(checkpoints)
  return bool(partial) and max(map(int, partial)) > (RunDir(checkpoints.rsplit("/", 1)[0]).latest_step() or -1)


@pytest.mark.slow
def test_a_run_on_a_bucket_killed_inside_a_save_resumes_bitwise_equal_and_is_read_back(gcs, bucket, tmp_path):
  """A run is stopped inside a save: a second run is refused, as the first holds the lock; the first is SIGKILLed
  there. Its lease lapses, the next run takes the lock over, resumes from the last complete checkpoint and ends
  where a run on a local disk that was never interrupted ends. `evaluate` and `visualize` read the run back."""
  env = dict(gcs.env, **{workdir.LEASE_S_VARIABLE: str(LEASE_S)})
  local = str(tmp_path / "local")
  done = subprocess.run([sys.executable, "-m", "deconv_jax.train", *RUN, f"--workdir={local}"], cwd=REPO, env=env)
  assert done.returncode == 0
  run = RunDir(f"{bucket}/run")
  proc = start(run.path, env)
  try:
    deadline = time.time() + 120
    while run.latest_step() is None and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    stop_inside_a_save(proc, lambda: saving(run.checkpoints))
    second = command("deconv_jax.train", *RUN, f"--workdir={run.path}", env=env)
  finally:
    proc.kill()
  killed_at = time.time()
  proc.communicate(timeout=60)
  assert second.returncode == 2, second.stderr
  assert second.stderr.startswith(f"error: --workdir={run.path} is in use by another run (pid {proc.pid} on ")
  before = run.latest_step()
  assert before is not None and len(partial_saves(run.checkpoints)) == 1  # the save the kill interrupted
  time.sleep(max(0.0, killed_at + LEASE_S + 0.5 - time.time()))  # the killed run's lease lapses
  resumed = command("deconv_jax.train", *RUN, f"--workdir={run.path}", env=env)
  assert resumed.returncode == 0, resumed.stderr
  assert f"taking over the lock of pid {proc.pid} on " in resumed.stdout
  assert f"resumed from {run.path} at step {before}" in resumed.stdout
  assert partial_saves(run.checkpoints) == []
  (s1, p1), (s2, p2) = final_params(local), final_params(run.path)  # (os.path.join joins URLs too)
  assert s1 == s2 == 300
  assert_bitwise_equal(p1, p2)
  steps = [r["step"] for r in metric_writers.read_records(run.metrics)[0] if r["split"] == "train"]
  assert steps == list(range(20, 301, 20))

  evaluated = command("deconv_jax.evaluate", f"--workdir={run.path}", env=env)
  assert evaluated.returncode == 0 and json.loads(evaluated.stdout.strip().splitlines()[-1])["step"] == 300
  shown = command("deconv_jax.visualize", f"--workdir={run.path}", "--top_k=2", "--num_channels=2", env=env)
  assert shown.returncode == 0, shown.stderr
  top = {f.split("/")[0] for f in storage.files_under(run.path)}
  assert top == {
    *("config.json", "metrics.jsonl", "checkpoints", "tensorboard"),
    *("deconvnet_act1.png", "deconvnet_act2.png", "attribution_methods.png"),
  }  # no lock left behind


@pytest.mark.slow
def test_a_second_job_of_two_processes_is_refused_on_every_process(gcs, bucket):
  """The hosts of a job share its lock, which process 0 takes: when it is refused, process 1 stops too, with a line
  of its own, rather than waiting for process 0 in a collective."""
  from conftest import free_port

  path = f"{bucket}/run"
  env = dict(gcs.env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, "-m", "deconv_jax.train", *RUN, f"--workdir={path}", "--num_processes=2"]
  cmd.append(f"--coordinator_address=127.0.0.1:{free_port()}")
  with workdir.Lock(path):
    holder = json.loads(storage.read_text(RunDir(path).lock))["holder"]
    procs = [
      subprocess.Popen([*cmd, f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
      for i in range(2)
    ]
    try:
      errors = [p.communicate(timeout=120)[1].decode().strip().splitlines()[-1] for p in procs]
    finally:
      for p in procs:
        p.kill()
  assert [p.returncode for p in procs] == [2, 2], errors
  assert errors[0].startswith(f"error: --workdir={path} is in use by another run ({holder}; its lease was renewed ")
  assert errors[1] == f"error: --workdir={path} is in use by another run (process 0 was refused its lock)"
