#!/usr/bin/env python
"""Probes of hostile inputs: damaged caches and responses, bad parameter files, interrupted
runs, lossy event and orientation files, misbehaving download servers, misleading bootstrap
settings and malformed files.

Each probe builds its input on a small simulated problem (nside 4), runs the command line or a
library call of the checkout given by ``--repo`` in its own child process and folder (forked
from a process that imported that checkout once; ``--timeout`` seconds at most), and is
classified as

* ``clear error``: exit status ≠ 0, a one-line message naming the file, key or option, no
  traceback;
* ``warning+counts``: exit status 0 and a warning that says how many events or rows it left out;
* ``right answer``: exit status 0 and a result equal to a reference computed independently;
* ``traceback``, ``signal`` (killed by a signal), ``silent wrong`` (exit status 0 with a wrong
  result and no warning), ``unclear error`` (no traceback, but a message that does not name the
  problem), ``unsupported`` (the checkout does not know an option the probe needs) or
  ``skipped``.

A markdown table ``case | outcome | message`` is printed (exit status 1 when any probe is
not a clear error, a warning with counts or the right answer); ``--json FILE`` also writes
the outcomes. The same probes run against an older checkout to compare before and after: a
probe whose API is missing there is classified by what happens. The disk-full, read-only
folder and read-only package probes mount a small tmpfs or a read-only bind mount (they need
root; without it they are skipped or say so).

Usage::

    python tools/hostile_probes.py [--repo PATH] [--jobs N] [--only SUBSTRING] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# helpers imported by every probe (written into the work folder as probe_helpers.py)

HELPERS = r'''
import contextlib, glob, json, logging, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np

BASE = Path(os.environ["PROBE_BASE"])
MMAP_CHILD = """
import json, sys
import numpy as np
from comptonsky.response.load import load_response
op = load_response("r.h5", **json.loads(sys.argv[1]))
x = np.random.default_rng(0).random(op.n_model)
first = op.forward(x)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(5):
    y = op.forward(x)
    op.adjoint(y)
print("same", bool(np.array_equal(y, first)), flush=True)
"""
WARNINGS = []


class _Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            WARNINGS.append(record.getMessage())


logging.getLogger().addHandler(_Keep())
logging.getLogger().setLevel(logging.WARNING)


def outcome(kind, text=""):
    """Tell the harness what the probe found: right, wrong or counted."""
    print(f"PROBE-OUTCOME {kind} {text}".rstrip(), flush=True)


def cli(*args):
    """comptonsky's command line in this process; returns the exit status."""
    from comptonsky.cli import main
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    return 0 if rc is None else rc


def cli_sub(*args, env=None, timeout=60):
    """comptonsky's command line in a child process: (rc, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "comptonsky", *map(str, args)], text=True,
                       capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def _quiet():
    """--no-plots and --no-report, where this checkout has them."""
    import inspect
    import comptonsky.cli.deconvolve as mod
    text = inspect.getsource(mod)
    return [o for o in ("--no-plots", "--no-report") if f'"{o}"' in text]


def deconvolve(out, *extra, par=None, rsp=None, event=None):
    par = par or BASE / "par.yml"
    return cli("deconvolve", par, "--event", event or BASE / "event.h5", "--background",
               f"albedo={BASE / 'bkg.h5'}", "--response", rsp or BASE / "rsp.h5",
               "--output", out, *_quiet(), *extra)


def deconvolve_args(out, *extra, par=None):
    return ["deconvolve", str(par or BASE / "par.yml"), "--event", str(BASE / "event.h5"),
            "--background", f"albedo={BASE / 'bkg.h5'}", "--response", str(BASE / "rsp.h5"),
            "--output", str(out), *_quiet(), *map(str, extra)]


def maps(out):
    """{iteration: contents} of the model maps in a run folder."""
    from histpy import Histogram
    found = {}
    for f in glob.glob(str(Path(out) / "model_itr*.hdf5")):
        it = int(Path(f).stem.split("itr")[1])
        h = Histogram.open(f)
        found[it] = np.asarray(h.contents.value if hasattr(h.contents, "value") else h.contents,
                               dtype=float)
    return found


def final_map(out):
    m = maps(out)
    return m[max(m)] if m else None


def compare(value, reference, rtol, what):
    """outcome right when value matches reference to rtol (relative to the largest pixel)."""
    if value is None:
        outcome("wrong", f"no {what} written")
        return
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    if value.shape != reference.shape or not np.all(np.isfinite(value)):
        outcome("wrong", f"{what}: shape {value.shape} or non-finite pixels "
                         f"({int(np.sum(~np.isfinite(value)))})")
        return
    err = np.abs(value - reference).max() / np.abs(reference).max()
    ratio = value.sum() / reference.sum()
    if err <= rtol:
        outcome("right", f"{what} equals the reference (max rel. diff {err:.1e})")
    else:
        outcome("wrong", f"{what}: max rel. diff {err:.2e}, total flux ratio {ratio:.3f}")


def write_rsp(path, contents=None, unit=None):
    from histpy import Histogram
    rsp = Histogram.open(BASE / "rsp.h5")
    c = np.array(rsp.contents.value if contents is None else contents)
    h = Histogram(rsp.axes, contents=c, unit=rsp.unit if unit is None else unit)
    h.write(path, overwrite=True)
    return Path(path)


def cache_files(cdir, part=False):
    files = [p for p in Path(cdir).rglob("*") if p.is_file()]
    if part:
        return [p for p in files if p.name.endswith(".part")]
    return sorted((p for p in files if not p.name.endswith((".part", ".lock", ".json"))),
                  key=lambda p: p.stat().st_size)


def cache_footer(path):
    import struct
    trailer = struct.Struct("<Q8s")
    data = Path(path).read_bytes()
    n, _ = trailer.unpack(data[-trailer.size:])
    start = len(data) - trailer.size - n
    return json.loads(data[start:start + n]), start, trailer


def write_footer(path, footer, start, trailer, magic):
    raw = json.dumps(footer).encode()
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(raw + trailer.pack(len(raw), magic))
        fh.truncate()


def tamper(path, name, change):
    """change(array) in place on array ``name`` of a cache file (checksum left as it was)."""
    os.chmod(path, 0o644)
    footer, _, _ = cache_footer(path)
    info = footer["arrays"][name]
    mm = np.memmap(path, dtype=np.dtype(info["dtype"]), mode="r+", offset=info["offset"],
                   shape=tuple(info["shape"]))
    change(mm)
    mm.flush()
    del mm


def tra_block(i, t, cd=True, ce="300.0 1 211.0 1"):
    lines = [f"SE", "ET CO", f"ID {i}", f"TI {t!r}", "GX 0 0", "GZ 0 90", f"CE {ce}"]
    if cd:
        lines.append(f"CD {1 + i % 7}.0 0.5 {2 + i % 3}.0   0 0 0   -1.0 2.0 0.5   0 0 0   0 0 0   0 0 0")
    return "\n".join(lines) + "\n"


T0 = 1835478000.0
BIN_YAML = f"""\
unbinned_output: 'hdf5'
time_bins: 10
tmin: {T0}
tmax: {T0 + 10.0}
energy_bins: [100., 300., 520., 5000.]
phi_pix_size: 30
nside: 2
scheme: 'ring'
"""


def binned_total(path):
    from histpy import Histogram
    h = Histogram.open(path)
    c = h.contents
    c = c.todense() if hasattr(c, "todense") else c
    return float(np.asarray(getattr(c, "value", c)).sum())


def ori_text(rows):
    body = "".join("OG " + " ".join(repr(float(v)) for v in r) + "\n" for r in rows)
    return "Type OrientationsGalactic\n" + body + "EN\n"


def ori_rows(n=20):
    """time, x b, x l, z b, z l, altitude, earth zenith b, earth zenith l, livetime"""
    rows = []
    for i in range(n):
        lon = 10.0 * i
        rows.append([T0 + i, 0.0, lon, 0.0, (lon + 90.0) % 360, 550.0, 10.0, lon,
                     1.0 if i < n - 1 else 0.0])
    return rows


def check_ori(path, n_rows):
    """read_ori of a file with one impossible row: it has no right answer, so taking it without
    a word (whatever the rotations) is wrong; a warning must count what was left out."""
    from comptonsky.io.orientation import read_ori
    o = read_ori(path)
    mats = np.asarray(o.rotations)
    finite = bool(np.all(np.isfinite(mats)))
    ortho = finite and np.allclose(np.einsum("nij,nkj->nik", mats, mats), np.eye(3), atol=1e-6)
    said = [w for w in WARNINGS if any(ch.isdigit() for ch in w)]
    if said and len(mats) < n_rows:
        outcome("counted", said[-1])
    else:
        bad = int(np.sum(~np.isfinite(mats).all(axis=(1, 2))))
        outcome("wrong", f"accepted: {len(mats)} of {n_rows} rows, {bad} rotations with NaN, "
                         f"orthonormal {ortho}")
'''

# --------------------------------------------------------------------------------------------
# shared inputs (built once per checkout)

SETUP = r'''
import numpy as np, os
from pathlib import Path
from comptonsky.testing import toy_problem
base = Path(os.environ["PROBE_BASE"])
p = toy_problem(nside=4, phi_bin_deg=30.0, seed=3)
p.response.write(base / "rsp.h5", overwrite=True)
p.event.write(base / "event.h5", overwrite=True)
p.background.write(base / "bkg.h5", overwrite=True)
np.save(base / "truth.npy", p.truth)
'''

PARFILE = """\
author: probes
model_definition:
  class: "AllSkyImage"
  property:
    coordinate: "galactic"
    nside: {nside}
    scheme: "ring"
    energy_edges:
      value: [509.0, 513.0]
      unit: "keV"
    unit: "cm-2 s-1 sr-1"
  initialization:
    algorithm: "flat"
    parameter:
      value: [{flat}]
      unit: "cm-2 s-1 sr-1"
deconvolution:
  algorithm: "RL"
  parameter:
    iteration_max: {iterations}
    acceleration:
        activate: False
        alpha_max: 10.0
    response_weighting:
        activate: False
        index: 0.5
    smoothing:
        activate: False
        FWHM:
            value: 30.0
            unit: "deg"
    stopping_criteria:
        statistics: "log-likelihood"
        threshold: -1.0e+30
    background_normalization_optimization:
        activate: True
        range: {{"albedo": [0.01, 10.0]}}
    save_results:
        activate: {save}
        directory: "./results"
        only_final_result: True
"""


def parfile(nside=4, flat="1e-4", iterations=5, save="False") -> str:
    return PARFILE.format(nside=nside, flat=flat, iterations=iterations, save=save)


# --------------------------------------------------------------------------------------------
# the probes: (name, code, words one of which a clear error must name)

CASES: list[tuple[str, str, tuple[str, ...]]] = []


def case(name: str, code: str, names: tuple[str, ...] = ()) -> None:
    CASES.append((name, textwrap.dedent(code), names))


REF = "np.load(BASE / 'ref.npy')"

# ---- caches
case("cache: NaN in a dense float32 cache", f"""
    deconvolve("a", "--dtype", "float32", "--cache-dir", "c")
    f = cache_files("c")[-1]
    tamper(f, "matrix", lambda m: m.reshape(-1).__setitem__(500, np.nan))
    rc = deconvolve("b", "--dtype", "float32", "--cache-dir", "c")
    rc or compare(final_map("b"), {REF}, 1e-3, "map")
    sys.exit(rc)
""", ("cache",))
case("cache: 10 rows scaled x50", f"""
    deconvolve("a", "--dtype", "float32", "--cache-dir", "c")
    f = cache_files("c")[-1]
    def scale(m):
        m[:10] *= 50
    tamper(f, "matrix", scale)
    rc = deconvolve("b", "--dtype", "float32", "--cache-dir", "c")
    rc or compare(final_map("b"), {REF}, 1e-3, "map")
    sys.exit(rc)
""", ("cache",))
case("cache: sparse, one bad row pointer", f"""
    deconvolve("a", "--dtype", "float32", "--storage", "sparse", "--sparse-threshold", "0",
               "--cache-dir", "c")
    f = cache_files("c")[-1]
    arrays = cache_footer(f)[0]["arrays"]
    name = next(n for n in arrays if "ptr" in n or "offset" in n or "start" in n)
    def bad(m):
        m[len(m) // 2] = 2 ** 30
    tamper(f, name, bad)
    rc = deconvolve("b", "--dtype", "float32", "--storage", "sparse", "--sparse-threshold", "0",
                    "--cache-dir", "c")
    rc or compare(final_map("b"), {REF}, 1e-3, "map")
    sys.exit(rc)
""", ("cache",))
case("cache: footer claims a larger matrix", f"""
    deconvolve("a", "--dtype", "float32", "--cache-dir", "c")
    f = cache_files("c")[-1]
    footer, start, trailer = cache_footer(f)
    magic = Path(f).read_bytes()[-8:]
    footer["arrays"]["matrix"]["shape"][0] *= 4
    write_footer(f, footer, start, trailer, magic)
    rc1 = deconvolve("b", "--dtype", "float32", "--cache-dir", "c")
    rc2 = deconvolve("d", "--dtype", "float32", "--cache-dir", "c")   # rebuilt?
    rc = rc1 or rc2
    rc or compare(final_map("d"), {REF}, 1e-3, "map of the run after")
    sys.exit(rc)
""", ("cache",))
case("cache: planted cache with matching key", """
    import shutil
    shutil.copy(BASE / "rsp.h5", "r.h5")
    deconvolve("a", "--dtype", "float32", "--cache-dir", "c", rsp="r.h5")
    st = os.stat("r.h5")
    from histpy import Histogram
    h = Histogram.open("r.h5")
    write_rsp("r2.h5", np.asarray(h.contents.value) * 2)
    os.replace("r2.h5", "r.h5")                        # another response ...
    os.utime("r.h5", ns=(st.st_atime_ns, st.st_mtime_ns))    # ... same size and mtime
    same_size = os.stat("r.h5").st_size == st.st_size
    rc = deconvolve("b", "--dtype", "float32", "--cache-dir", "c", rsp="r.h5")
    # the right answer for the doubled response, computed without any cache
    deconvolve("ref2", "--dtype", "float32", "--no-cache", rsp="r.h5")
    rc or compare(final_map("b"), final_map("ref2"), 1e-3, f"map (same size {same_size})")
    sys.exit(rc)
""", ("cache",))
case("cache: orphan .part of a killed conversion", """
    deconvolve("a", "--dtype", "float32", "--cache-dir", "c")
    f = cache_files("c")[-1]
    orphan = f.parent / ("." + f.name + ".12345.part")
    orphan.write_bytes(b"\\0" * 100000)
    old = time.time() - 3 * 86400
    os.utime(orphan, (old, old))
    os.unlink(f)                                       # the next run converts again
    rc = deconvolve("b", "--dtype", "float32", "--cache-dir", "c")
    if rc == 0:
        left = cache_files("c", part=True)
        outcome("wrong" if orphan.exists() else "right",
                f"orphan {'kept' if orphan.exists() else 'removed'}; .part files left: {len(left)}")
    sys.exit(rc)
""", ("cache", ".part"))
case("cache: unwritable --cache-dir", f"""
    Path("afile").write_text("x")
    rc = deconvolve("b", "--dtype", "float32", "--cache-dir", "afile/sub")
    rc or compare(final_map("b"), {REF}, 1e-3, "map")
    sys.exit(rc)
""", ("afile", "cache"))
case("cache: response in a read-only folder (cache beside it)", f"""
    import shutil
    os.makedirs("ro")
    shutil.copy(BASE / "rsp.h5", "ro/r.h5")
    ok = subprocess.run(["mount", "--bind", "ro", "ro"], capture_output=True).returncode == 0
    ok = ok and subprocess.run(["mount", "-o", "remount,ro,bind", "ro"],
                               capture_output=True).returncode == 0
    if not ok:
        print("PROBE-SKIP cannot make a read-only bind mount"); sys.exit(0)
    try:
        rc = deconvolve("b", "--dtype", "float32", rsp="ro/r.h5")
    finally:
        subprocess.run(["umount", "-l", "ro"], capture_output=True)
    rc or compare(final_map("b"), {REF}, 1e-3, "map")
    sys.exit(rc)
""", ("ro", "cache"))
case("cache: unwritable HOME, comptonsky --help", """
    import shutil
    repo = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0])
    shutil.copytree(repo / "comptonsky", "ro/comptonsky",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    mounted = subprocess.run(["mount", "--bind", "ro", "ro"], capture_output=True).returncode == 0
    mounted = mounted and subprocess.run(["mount", "-o", "remount,ro,bind", "ro"],
                                         capture_output=True).returncode == 0
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA", "XDG"))}
        env.update(HOME="/proc/no-home", PYTHONPATH="ro" if mounted else str(repo))
        rc, out, err = cli_sub("--help", env=env)
    finally:
        subprocess.run(["umount", "-l", "ro"], capture_output=True)
    sys.stderr.write(err)
    where = "read-only package" if mounted else "writable package (no read-only mount)"
    if rc == 0:
        outcome("right" if "usage" in out else "wrong", f"help printed ({where})")
    sys.exit(rc)
""", ("HOME", "cache"))

# ---- memory-mapped responses changed under a running job
SIGBUS_CODE = """
    import shutil, subprocess
    shutil.copy(BASE / "rsp.h5", "r.h5")
    KW = dict(storage="dense")
    PREP
    p = subprocess.Popen([sys.executable, "-c", MMAP_CHILD, json.dumps(KW)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    MODE
    out, err = p.communicate("go\\n", timeout=60)
    sys.stderr.write(err)
    if p.returncode < 0:
        os.kill(os.getpid(), -p.returncode)
    if p.returncode == 0:
        outcome("right" if "same True" in out else "wrong", out.strip())
    sys.exit(p.returncode)
"""
def _mmap_case(name, mode, prep="", names=("r.h5",)):
    case(name, SIGBUS_CODE.replace("PREP", prep).replace("MODE", mode), names)


_mmap_case("mmap: response truncated under a running job", 'os.truncate("r.h5", 4096)')
_mmap_case("mmap: response replaced (rewritten in place) under a running job",
           'open("r.h5", "r+b").write(bytes(8192)); os.truncate("r.h5", 8192)')
_mmap_case("mmap: float32 cache truncated under a running job", """for f in cache_files("c"):
        os.chmod(f, 0o644)
        os.truncate(f, 4096)""", prep="""KW.update(dtype="float32", cache_dir="c")
    from comptonsky.response.load import load_response
    op = load_response("r.h5", **KW)
    pending = getattr(op, "load_info", {}).get("cache_pending")
    pending is None or pending.result()
    del op""", names=("cache", "r.h5"))

# ---- response values and units
case("response: one NaN element", f"""
    from histpy import Histogram
    c = np.array(Histogram.open(BASE / "rsp.h5").contents.value); c.reshape(-1)[1234] = np.nan
    write_rsp("bad.h5", c)
    rc = deconvolve("b", rsp="bad.h5")
    rc or compare(final_map("b"), {REF}, 1e-6, "map")
    sys.exit(rc)
""", ("bad.h5",))
case("response: one negative element", f"""
    from histpy import Histogram
    c = np.array(Histogram.open(BASE / "rsp.h5").contents.value); c.reshape(-1)[1234] = -c.max()
    write_rsp("bad.h5", c)
    rc = deconvolve("b", rsp="bad.h5")
    rc or compare(final_map("b"), {REF}, 1e-6, "map")
    sys.exit(rc)
""", ("bad.h5",))
case("response: unit m2 s", """
    from astropy import units as u
    from histpy import Histogram
    c = np.array(Histogram.open(BASE / "rsp.h5").contents.value)
    write_rsp("m2.h5", c, unit=u.m ** 2 * u.s)
    write_rsp("cm2.h5", c * 1e4, unit=u.cm ** 2 * u.s)     # the same response in cm2 s
    deconvolve("ref", rsp="cm2.h5")
    rc = deconvolve("b", rsp="m2.h5")
    rc or compare(final_map("b"), final_map("ref"), 1e-6, "map")
    sys.exit(rc)
""", ("m2.h5", "unit"))
case("response: unparsable unit", f"""
    import h5py
    write_rsp("bad.h5")
    with h5py.File("bad.h5", "r+") as f:
        f["hist"].attrs["unit"] = "furlong"
    rc = deconvolve("b", rsp="bad.h5")
    rc or compare(final_map("b"), {REF}, 1e-6, "map")
    sys.exit(rc)
""", ("furlong",))

# ---- parameters
for label, flat in (("0", "0.0"), ("negative", "-1e-4")):
    case(f"parameters: flat start {label}", f"""
    Path("p.yml").write_text({parfile(flat=flat)!r})
    rc = deconvolve("b", par="p.yml")
    rc or compare(final_map("b"), {REF}, 1e-6, "map")
    sys.exit(rc)
""", ("p.yml", "initialization", "parameter"))
case("parameters: no deconvolution: section", f"""
    text = {parfile()!r}
    Path("p.yml").write_text(text.split("deconvolution:")[0])
    rc = deconvolve("b", par="p.yml")
    rc or compare(final_map("b"), {REF}, 1e-6, "map (5 iterations expected)")
    sys.exit(rc)
""", ("p.yml", "deconvolution"))
case("parameters: duplicate YAML key", f"""
    text = {parfile()!r}
    text = text.replace("iteration_max: 5", "iteration_max: 5\\n    iteration_max: 1")
    Path("p.yml").write_text(text)
    rc = deconvolve("b", par="p.yml")
    rc or compare(final_map("b"), {REF}, 1e-6, "map (5 iterations expected)")
    sys.exit(rc)
""", ("iteration_max",))
case("parameters: save_results directory", f"""
    from histpy import Histogram
    from comptonsky import DataIF_COSI_DC2, ImageDeconvolution
    os.makedirs("pars"); os.makedirs("elsewhere")
    Path("pars/p.yml").write_text({parfile(iterations=2, save="True")!r})
    os.chdir("elsewhere")
    data = DataIF_COSI_DC2.load("d", Histogram.open(BASE / "event.h5"),
                                {{"albedo": Histogram.open(BASE / "bkg.h5")}},
                                Histogram.open(BASE / "rsp.h5"))
    deconv = ImageDeconvolution()
    deconv.set_dataset([data])
    deconv.read_parameterfile("../pars/p.yml")
    deconv.initialize()
    deconv.run_deconvolution()
    os.chdir("..")
    where = [d for d in ("elsewhere/results", "pars/results") if Path(d).exists()]
    outcome("wrong" if "elsewhere/results" in where else "right",
            f"results written to {{where}}")
""", ("save_results", "directory"))

# ---- interrupted runs
case("run: Ctrl-C during a run", f"""
    Path("p.yml").write_text({parfile(iterations=100000)!r})
    args = deconvolve_args("b", par="p.yml")
    p = subprocess.Popen([sys.executable, "-m", "comptonsky", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t = time.time()
    while time.time() - t < 30 and not glob.glob("b/*"):
        time.sleep(0.2)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    sys.stderr.write(err)
    sys.exit(p.returncode)
""", ("interrupt", "checkpoint"))
case("run: kill -9 while a rerun saves", f"""
    deconvolve("b")
    Path("p.yml").write_text({parfile(iterations=40)!r})
    args = deconvolve_args("b", "--overwrite", par="p.yml")
    if "--overwrite" not in cli_sub("deconvolve", "--help")[1]:
        args.remove("--overwrite")
    p = subprocess.Popen([sys.executable, "-m", "comptonsky", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    def saving():                        # the new run's final map (or its temporary) appears
        return any("itr40" in n for n in os.listdir("b"))
    while p.poll() is None and not saving():
        time.sleep(0.002)
    p.kill(); p.communicate()
    s = json.loads(Path("b/summary.json").read_text()) if Path("b/summary.json").exists() else {{}}
    status, its = s.get("status", "complete" if s else "(none)"), sorted(maps("b"))
    newer = [n for n in os.listdir("b") if Path("b/summary.json").exists()
             and os.stat(Path("b") / n).st_mtime > os.stat("b/summary.json").st_mtime]
    if status not in ("running", "interrupted", "(none)") and (newer or its != [s.get("iterations")]):
        outcome("wrong", f"summary.json says {{status}} after {{s.get('iterations')}} iterations "
                         f"beside maps {{its[-3:]}} and newer files {{newer[:3]}}")
    else:
        outcome("right", f"summary.json status {{status}}, maps {{its[-3:]}}")
""", ())
case("run: rerun into a used folder", """
    deconvolve("b", "--all-iterations")
    Path("p.yml").write_text(Path(BASE / "par.yml").read_text().replace("iteration_max: 5",
                                                                        "iteration_max: 2"))
    rc = deconvolve("b", par="p.yml")
    if rc == 0:
        its = sorted(maps("b"))
        outcome("wrong" if max(its) > 2 else "right", f"maps of iterations {its} in the folder")
    sys.exit(rc)
""", ("b", "overwrite"))
case("run: kill -9 then --resume", f"""
    Path("p.yml").write_text({parfile(iterations=300)!r})
    deconvolve("ref", par="p.yml")
    args = deconvolve_args("b", "--checkpoint-every", "5", par="p.yml")
    p = subprocess.Popen([sys.executable, "-m", "comptonsky", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t = time.time()
    while time.time() - t < 40 and not Path("b/checkpoint.npz").exists() and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    p.kill(); _, err = p.communicate()
    if "unrecognized arguments" in err:
        sys.stderr.write(err); sys.exit(2)
    rc = deconvolve("b", "--resume", par="p.yml")
    rc or compare(final_map("b"), final_map("ref"), 0.0, "resumed map")
    sys.exit(rc)
""", ("resume", "checkpoint"))

# ---- inputs that lose data
case(".tra: events without a CD line", """
    Path("b.yml").write_text(BIN_YAML)
    n, missing = 30, 10
    text = "Type TRA\\nVersion 1\\n\\n" + "".join(tra_block(i, T0 + 0.3 * i, cd=i >= missing)
                                            for i in range(n)) + "EN\\n"
    Path("e.tra").write_text(text)
    rc = cli("bin", "b.yml", "e.tra", "-o", "o.h5", "--no-progress")
    if rc == 0:
        total = binned_total("o.h5")
        said = [w for w in WARNINGS if str(missing) in w]
        if said:
            outcome("counted", said[0])
        elif total == n:
            outcome("right", f"all {n} events binned")
        else:
            outcome("wrong", f"{total:.0f} of {n} events binned, no count of the others")
    sys.exit(rc)
""", ("e.tra",))
case(".tra: CE nan", """
    Path("b.yml").write_text(BIN_YAML)
    n = 20
    text = "Type TRA\\nVersion 1\\n\\n" + "".join(tra_block(i, T0 + 0.3 * i, ce="nan 1 nan 1")
                                            for i in range(n)) + "EN\\n"
    Path("e.tra").write_text(text)
    rc = cli("bin", "b.yml", "e.tra", "-o", "o.h5", "--no-progress")
    if rc == 0:
        said = [w for w in WARNINGS if str(n) in w]
        outcome("counted", said[0]) if said else outcome(
            "wrong", f"{binned_total('o.h5'):.0f} of {n} events binned, no word")
    sys.exit(rc)
""", ("e.tra", "energ"))
case("bin --event-range 100 10", """
    Path("b.yml").write_text(BIN_YAML)
    text = "Type TRA\\nVersion 1\\n\\n" + "".join(tra_block(i, T0 + 0.03 * i)
                                            for i in range(200)) + "EN\\n"
    Path("e.tra").write_text(text)
    rc = cli("bin", "b.yml", "e.tra", "-o", "o.h5", "--no-progress", "--event-range", "100", "10")
    if rc == 0:
        said = [w for w in WARNINGS if any(c.isdigit() for c in w)]
        outcome("counted", said[0]) if said else outcome(
            "wrong", f"{binned_total('o.h5'):.0f} events binned, no word")
    sys.exit(rc)
""", ("event-range", "event range", "100"))
for label, edit in (("NaN angles", "rows[5][2] = float('nan')"),
                    ("x = z", "rows[5][3], rows[5][4] = rows[5][1], rows[5][2]"),
                    ("latitude > 90", "rows[5][1] = 120.0"),
                    ("duplicate times", "rows[6][0] = rows[5][0]")):
    case(f".ori: {label}", f"""
    rows = ori_rows(20)
    {edit}
    Path("a.ori").write_text(ori_text(rows))
    check_ori("a.ori", 20)
""", ("a.ori",))

# ---- downloads (a local server, 127.0.0.1 only)
SERVER = r"""
import http.server, threading, hashlib
PAYLOAD = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
OTHER = np.random.default_rng(8).integers(0, 256, len(PAYLOAD), dtype=np.uint8).tobytes()


class Scripted:
    def __init__(self, *, etag='"v1"', content_length=True, honour_range=True, cuts=(),
                 range_from_zero=False, if_range=True, max_requests=6):
        self.requests = []
        self.cuts = list(cuts)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                rng, ifr = self.headers.get("Range"), self.headers.get("If-Range")
                server.requests.append((rng, ifr))
                if len(server.requests) > max_requests:
                    self.send_error(503, "budget spent")
                    return
                start = 0
                if rng and honour_range and (not if_range or ifr is None or ifr == etag):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    if range_from_zero:
                        start = 0
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                if content_length:
                    self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                cut = server.cuts.pop(0) if server.cuts else None
                self.wfile.write(body if cut is None else body[:cut])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/a.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Timer(30, self.httpd.shutdown).start()


def stale(data, validator=None, url=None):
    Path(".a.bin.part").write_bytes(data)
    if validator is not None:
        Path(".a.bin.part.json").write_text(json.dumps({"url": url, "validator": validator,
                                                        "length": len(PAYLOAD)}))


def fetch_and_check(s):
    from comptonsky.io.fetch import fetch_file
    out = fetch_file(s.url, output=Path("a.bin").resolve(), progress=False)
    got = Path(out).read_bytes()
    if got == PAYLOAD:
        outcome("right", "the file is the server's")
    else:
        outcome("wrong", f"{len(got)} bytes under the final name, not the file's {len(PAYLOAD)}")
    os._exit(0)
"""
case("download: no Content-Length, early close", SERVER + """
s = Scripted(content_length=False, honour_range=False, cuts=[100_000])
fetch_and_check(s)
""", ("a.bin",))
case("download: stale .part of another version", SERVER + """
s = Scripted()
stale(OTHER[:100_000])
fetch_and_check(s)
""", ("a.bin",))
case("download: oversized .part then 416", SERVER + """
s = Scripted()
stale(PAYLOAD + b"tail of another version", '"v1"', s.url)
fetch_and_check(s)
""", ("a.bin",))
case("download: 206 from another offset", SERVER + """
s = Scripted(range_from_zero=True)
stale(PAYLOAD[:100_000], '"v1"', s.url)
fetch_and_check(s)
""", ("a.bin",))

# ---- bootstrap
BOOT = f"""
    Path("p.yml").write_text({parfile(iterations=20)!r})
    rc = cli("uncertainty", "p.yml", "--event", BASE / "event.h5", "--background",
             f"albedo={{BASE / 'bkg.h5'}}", "--response", BASE / "rsp.h5", "--output", "u",
             "--samples", SAMPLES, "--workers", "2", "--no-progress")
    if rc:
        sys.exit(rc)
    data = json.loads(Path("u/region_fluxes.json").read_text())
    def entries(node, name=""):
        if isinstance(node, dict):
            if "flux" in node:
                yield name, node
            for k, v in node.items():
                yield from entries(v, k)
        elif isinstance(node, list):
            for v in node:
                yield from entries(v, name)
    first = lambda v: v[0] if isinstance(v, list) else v
    items = [(n, {{k: first(v) for k, v in r.items()}}) for n, r in entries(data)]
"""
case("bootstrap: quoted flux vs replicate mean (drift)", BOOT.replace("SAMPLES", "12") + """
    worst = None
    for name, r in items:
        flux = r.get("flux", r.get("value"))
        mean, std = r.get("mean", r.get("bootstrap_mean")), r.get("std", r.get("error"))
        if None in (flux, mean, std) or not std:
            continue
        z = abs(mean - flux) / std
        worst = max(worst or (0, ""), (z, name))
    if worst is None:
        outcome("wrong", f"no flux/mean/std in region_fluxes.json ({str(data)[:60]})")
    elif worst[0] <= 1:
        outcome("right", f"replicate mean within {worst[0]:.2f} std of the quoted flux")
    elif [w for w in WARNINGS if "bias" in w or "mean" in w]:
        outcome("counted", [w for w in WARNINGS if "bias" in w or "mean" in w][0])
    else:
        outcome("wrong", f"{worst[1]}: replicate mean {worst[0]:.1f} std from the quoted flux, "
                         "no warning")
""", ("uncertainty",))
case("bootstrap: 4 samples", BOOT.replace("SAMPLES", "4") + """
    text = json.dumps(data)
    warned = [w for w in WARNINGS if "too few" in w or "samples" in w]
    significance = [p.name for p in Path("u").iterdir() if "signif" in p.name]
    if warned:
        outcome("counted", warned[0])
    elif significance:
        outcome("wrong", f"significance map from 4 replicates, no warning: {significance[0]}")
    elif "interval" in text or "percentile" in text or "q16" in text:
        outcome("wrong", "percentile intervals from 4 replicates, no warning")
    else:
        outcome("right", "no intervals or significances quoted from 4 replicates")
""", ("samples",))

# ---- the remaining tracebacks
HIST = """
    from histpy import Axis, HealpixAxis, Histogram
    import h5py
    h = Histogram.open(BASE / "event.h5")
    h.write("e.h5", overwrite=True)
"""
case("file: hist group without axes", HIST + """
    with h5py.File("e.h5", "r+") as f:
        del f["hist/axes"]
    sys.exit(deconvolve("b", event="e.h5"))
""", ("e.h5",))
case("file: contents shape != axes", HIST + """
    with h5py.File("e.h5", "r+") as f:
        del f["hist/contents"]
        f["hist"].create_dataset("contents", data=np.zeros((7, 3)))
    sys.exit(deconvolve("b", event="e.h5"))
""", ("e.h5",))
case("parameters: nside 5", f"""
    Path("p.yml").write_text({parfile(nside=5)!r})
    sys.exit(deconvolve("b", par="p.yml"))
""", ("nside",))
case("parameters: binary parameter file", """
    Path("p.yml").write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    sys.exit(deconvolve("b", par="p.yml"))
""", ("p.yml",))
case("bin: energy_bins \"abc\"", """
    Path("b.yml").write_text(BIN_YAML.replace("[100., 300., 520., 5000.]", '"abc"'))
    Path("e.tra").write_text("Type TRA\\nVersion 1\\n\\n" + tra_block(0, T0 + 1) + "EN\\n")
    sys.exit(cli("bin", "b.yml", "e.tra", "-o", "o.h5", "--no-progress"))
""", ("energy_bins",))
for label, target, prep in (("--output .", ".", ""),
                            ("--output existing file", "o.h5", 'Path("o.h5").write_text("old")')):
    case(f"bin {label}", f"""
    Path("b.yml").write_text(BIN_YAML)
    Path("e.tra").write_text("Type TRA\\nVersion 1\\n\\n" + tra_block(0, T0 + 1) + "EN\\n")
    {prep}
    rc = cli("bin", "b.yml", "e.tra", "-o", "{target}", "--no-progress")
    if rc == 0:
        outcome("wrong" if Path("o.h5").exists() and Path("o.h5").read_bytes() != b"old"
                or "{target}" == "." else "right", "written over")
    sys.exit(rc)
""", (target if target != "." else "'.'", "folder", "exists", "directory", "o.h5"))
case("deconvolve --output existing file", """
    Path("o.h5").write_text("old")
    rc = deconvolve("o.h5")
    if rc == 0:
        outcome("wrong", "ran over a file")
    sys.exit(rc)
""", ("o.h5",))
MAP = """
    from astropy import units as u
    from histpy import Axis, HealpixAxis, Histogram
    def map_file(values):
        h = Histogram([HealpixAxis(nside=1, coordsys="galactic", label="lb"),
                       Axis([500.0, 520.0] * u.keV, label="Ei")], contents=values.reshape(12, 1))
        h.write("m.h5", overwrite=True)
"""
for label, values, args in (("plot --scale log on a zero map", "np.zeros(12)", '"--scale", "log"'),
                            ("plot --scale log on a NaN map", "np.full(12, np.nan)",
                             '"--scale", "log"'),
                            ("plot --scale log --vmin 0", "np.arange(12.0)",
                             '"--scale", "log", "--vmin", "0"'),
                            ("plot: unknown image extension", "np.arange(12.0)",
                             '"--output", "m.xyz"'),
                            ("plot --output .", "np.arange(12.0)", '"--output", "."')):
    case(label, MAP + f"""
    map_file({values})
    rc = cli("plot", "m.h5", {args})
    if rc == 0:
        outcome("wrong", "an image was written")
    sys.exit(rc)
""", ("m.h5", "vmin", "xyz", "folder"))
FULL = """
    import subprocess
    os.makedirs("full")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", "full"],
                       capture_output=True, text=True)
    if r.returncode:
        print("PROBE-SKIP cannot mount a tmpfs: " + r.stderr.strip()[:80]); sys.exit(0)
    try:
        with open("full/filler", "wb", buffering=0) as fh:        # leave the file system full
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"x" * 4096)
        BODY
    finally:
        subprocess.run(["umount", "-l", "full"])
    sys.exit(rc)
"""
case("disk full: bin output", FULL.replace("SIZE", "24k").replace("BODY", """
        Path("b.yml").write_text(BIN_YAML)
        Path("e.tra").write_text("Type TRA\\nVersion 1\\n\\n" + "".join(
            tra_block(i, T0 + 0.03 * i) for i in range(200)) + "EN\\n")
        rc = cli("bin", "b.yml", "e.tra", "-o", "full/o.h5", "--no-progress", "--dense")
        if rc == 0:
            outcome("wrong", "written on a full disk?")
"""), ("full", "space", "o.h5"))
case("disk full: deconvolve outputs", FULL.replace("SIZE", "96k").replace("BODY", """
        rc = deconvolve("full/b", "--all-iterations")
        if rc == 0:
            outcome("wrong", "written on a full disk?")
"""), ("full", "space"))


# --------------------------------------------------------------------------------------------
# running and classifying

#: Runs in the probed checkout: imports the libraries once, then forks one child per probe (at
#: most ``jobs`` at a time), each with its own folder, output files and process group.
RUNNER = r"""
import json, os, signal, sys, time, traceback
spec = json.load(open(sys.argv[1]))
for mod in ("numpy", "h5py", "healpy", "astropy.units", "histpy", "matplotlib", "yaml",
            "comptonsky", "comptonsky.cli", "comptonsky.response.load", "comptonsky.io.histogram",
            "comptonsky.io.orientation", "comptonsky.io.fetch", "comptonsky.testing"):
    try:
        __import__(mod)
    except Exception:
        pass
try:
    from comptonsky.errors import ComptonskyError
except Exception:
    ComptonskyError = ()


def child(c):
    os.setpgid(0, 0)
    os.chdir(c["cwd"])
    for fd, name in ((1, c["stdout"]), (2, c["stderr"])):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    code = 0
    try:
        exec(compile(c["prog"], "<probe>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        if ComptonskyError and isinstance(exc, ComptonskyError):
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        else:
            traceback.print_exc()
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start(c):
    pid = os.fork()
    if pid == 0:
        try:
            child(c)
        finally:
            os._exit(99)
    return pid


results = {}
for phase, jobs in ((spec["first"], 1), (spec["cases"], spec["jobs"])):
    queue, running = list(phase), {}
    while queue or running:
        while queue and len(running) < jobs:
            c = queue.pop(0)
            running[start(c)] = (c, time.time())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            c, t = running.pop(pid)
            results[c["name"]] = dict(rc=os.waitstatus_to_exitcode(status), late=False,
                                      seconds=time.time() - t)
            continue
        for pid, (c, t) in list(running.items()):
            if time.time() - t > c["timeout"]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                running.pop(pid)
                results[c["name"]] = dict(rc=None, late=True, seconds=time.time() - t)
        time.sleep(0.02)
    if phase is spec["first"] and any(results[c["name"]]["rc"] for c in phase):
        break
json.dump(results, open(sys.argv[2], "w"))
"""


def _env(repo: Path, base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(base)])
    env["PROBE_BASE"] = str(base)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("NUMBA_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


REFERENCE = """
rc = deconvolve(BASE / "refrun")
np.save(BASE / "ref.npy", final_map(BASE / "refrun"))
sys.exit(rc)
"""


def classify(rc: int | None, out: str, err: str, names: tuple[str, ...],
             timeout: bool) -> tuple[str, str]:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    found = [ln for ln in out.splitlines() if ln.startswith("PROBE-OUTCOME")]
    skip = [ln for ln in out.splitlines() if ln.startswith("PROBE-SKIP")]
    if skip:
        return "skipped", skip[0][len("PROBE-SKIP "):]
    if timeout:
        return "timeout", "no answer within the time limit"
    if "Traceback (most recent call last)" in err or "Traceback (most recent call last)" in out:
        exc = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Warning)\b")
        last = next((ln for ln in reversed(lines) if exc.match(ln)),
                    next((ln for ln in reversed(lines) if not ln.startswith(" ")), ""))
        return "traceback", last
    if rc is not None and rc < 0:
        import signal
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return "signal", f"killed by {name}"
    if rc:
        message = lines[-1] if lines else ""
        if "unrecognized arguments" in err or "invalid choice" in err:
            return "unsupported", message
        if names and not any(n.lower() in message.lower() for n in names):
            return "unclear error", message
        return "clear error", message
    warn = [ln for ln in lines if "WARNING" in ln or "Warning" in ln]
    if found:
        kind, _, text = found[-1][len("PROBE-OUTCOME "):].partition(" ")
        if kind == "wrong":
            return "silent wrong", text
        if kind == "counted":
            return "warning+counts", text
        return "right answer", (warn[0] if warn else text)
    if warn:
        return "warning", warn[0]
    return "silent wrong", "exit status 0 and nothing checked"


def run_all(cases, repo: Path, base: Path, python: str, jobs: int,
            timeout: float) -> list[tuple[str, str, str, float]]:
    """Run the probes through RUNNER; returns (case, outcome, message, seconds) per probe."""
    (base / "probe_helpers.py").write_text(HELPERS)
    (base / "par.yml").write_text(parfile())

    def entry(name, code, folder):
        work = base / folder
        work.mkdir()
        return dict(name=name, prog="from probe_helpers import *\n" + code, cwd=str(work),
                    stdout=str(base / f"{folder}.out"), stderr=str(base / f"{folder}.err"),
                    timeout=timeout)

    first = [entry("setup", SETUP, "setup"), entry("reference run", REFERENCE, "reference")]
    entries = [entry(name, code, f"probe{i:02d}") for i, (name, code, _) in enumerate(cases)]
    (base / "spec.json").write_text(json.dumps(dict(first=first, cases=entries, jobs=jobs)))
    subprocess.run([python, "-c", RUNNER, str(base / "spec.json"), str(base / "results.json")],
                   env=_env(repo, base), cwd=base, timeout=timeout * (2 + len(cases)), check=True)
    done = json.loads((base / "results.json").read_text())
    for c in first:
        if done[c["name"]]["rc"] != 0:
            raise SystemExit(f"the {c['name']} failed on {repo}:\n"
                             + Path(c["stderr"]).read_text()[-3000:])
    results = []
    for (name, _, names), e in zip(cases, entries):
        for mount in ("full", "ro"):                 # left mounted by a probe that timed out
            if os.path.ismount(Path(e["cwd"]) / mount):
                subprocess.run(["umount", "-l", str(Path(e["cwd"]) / mount)], capture_output=True)
        r = done.get(name, dict(rc=None, late=True, seconds=0.0))
        out = Path(e["stdout"]).read_text(errors="replace") if Path(e["stdout"]).exists() else ""
        err = Path(e["stderr"]).read_text(errors="replace") if Path(e["stderr"]).exists() else ""
        results.append((name, *classify(r["rc"], out, err, names, r["late"]), r["seconds"]))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=HERE, help="checkout to probe (default: this)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the probes")
    ap.add_argument("--jobs", type=int, default=3, help="probes run at the same time")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per probe")
    ap.add_argument("--only", action="append", default=[], help="probes whose name contains this")
    ap.add_argument("--json", type=Path, help="also write the outcomes to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    base = Path(tempfile.mkdtemp(prefix="hostile-probes-"))
    t0 = time.time()
    try:
        cases = [c for c in CASES if not args.only or any(o in c[0] for o in args.only)]
        results = run_all(cases, repo, base, args.python, args.jobs, args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"work folder: {base}", file=sys.stderr)
    print("| case | outcome | message |\n|---|---|---|")
    for name, outcome, message, _ in results:
        message = re.sub(r"\s+", " ", message).replace("|", "\\|")[:100]
        print(f"| {name} | {outcome} | {message} |")
    good = {"clear error", "warning+counts", "right answer", "skipped"}
    bad = [r for r in results if r[1] not in good]
    print(f"\n{len(results) - len(bad)} of {len(results)} probes give a clear error, a warning "
          f"with counts or the right answer ({time.time() - t0:.0f} s, {repo})")
    if args.json:
        args.json.write_text(json.dumps([dict(case=n, outcome=o, message=m, seconds=round(s, 1))
                                         for n, o, m, s in results], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
