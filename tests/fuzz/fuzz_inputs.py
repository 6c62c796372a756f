#!/usr/bin/env python3
"""Mutation fuzzing of dtx's user inputs (manifests, model folders, data folders).

Usage:
    fuzz_inputs.py DTX_BINARY OUT_DIR [--full] [--seed N] [--src REPO]
                   [--max-plan N] [--max-run N] [--budget SECONDS]

It copies the shipped manifests, tests/manifests and tests/fixtures of the
repository (--src, default: the repository this script sits in, or the
current directory) into OUT_DIR/tree, generates a small image folder data set
(PNG, labels.csv, masks) and a finished dtx run to use as sources, and
builds mutants of all of them:

  manifest.value         each `key = value` line set to an edge value
  manifest.inline        a scalar inside an inline table / array set to an edge value
  manifest.plugin_config a plugin config key (from docs/plugins/*.md) set to an edge value
  manifest.delete_line / dup_line / dup_section / truncate / byteflip
  manifest.set_override  malformed or extreme `--set` overrides
  model.diffusers_config config.json values and types
  model.safetensors      header length, header bytes, dtype / shape / offsets, truncation
  model.adm_pt           the pickle of a guided-diffusion .pt archive, the zip itself
  model.clip             CLIP config.json, tokenizer.json, model.safetensors
  model.dtx_run          a dtx run folder used as a `kind = "dtx"` source (manifest.toml, checkpoint)
  data.image / data.labels_csv / data.masks / data.folder / data.reference / data.condition

Every mutant is checked with `dtx plan` (and `dtx model inspect` / `dtx sample`
where a model file or run folder was mutated); a sample of the mutants that
`plan` accepts is run with `dtx run` with tiny step and sample counts.
Findings (panics, signals, timeouts, allocation failures, plan-ok/run-fails,
messages that name neither the file nor the key) are written to
OUT_DIR/findings.md; every case is in OUT_DIR/results.jsonl.

Quick mode (the default) runs about 200 plan cases and a handful of runs;
--full runs a few thousand plan cases and about 90 runs (about 30-45 min on
2 cores). The RNG seed is fixed (--seed), so a pass is reproducible.
Standard library only (Python >= 3.11, for tomllib). Every dtx process runs under `nice -n 19` with its
address space limited (--mem-limit-gb, default 3) so that a runaway
allocation cannot take the machine down.
"""

import argparse
import collections
import copy
import json
import os
import pickletools
import random
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
import zlib

# --------------------------------------------------------------------------
# Edge values
# --------------------------------------------------------------------------

LONG_STR = "A" * 100_000

# (label, TOML text); paths that need the tree are filled in by edge_values()
def edge_values(tree):
    deep_arr = "[" * 3000 + "]" * 3000
    deep_tab = "{ a = " * 1000 + "1" + " }" * 1000
    return [
        ("0", "0"),
        ("-1", "-1"),
        ("1", "1"),
        ("1e308", "1e308"),
        ("-1e308", "-1e308"),
        ("2^64", "18446744073709551616"),
        ("i64max", "9223372036854775807"),
        ("i64min", "-9223372036854775808"),
        ("2^32", "4294967296"),
        ("65537", "65537"),
        ('""', '""'),
        ('"x"', '"x"'),
        ("true", "true"),
        ("[]", "[]"),
        ("{}", "{}"),
        ("nan", "nan"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("-0.0", "-0.0"),
        ("1e-320", "1e-320"),
        ("longstr", '"' + LONG_STR + '"'),
        ("/dev/zero", '"/dev/zero"'),
        ("/dev/null", '"/dev/null"'),
        ("dir", '"."'),
        ("nonexistent", '"does/not/exist.safetensors"'),
        ("fifo", json.dumps(os.path.join(tree, "fifo"))),
        ("nul-in-str", '"a\\u0000b"'),
        ("dotdot", '"../../../../../../etc/passwd"'),
        ("badglob", '"[a"'),
        ("datetime", "1979-05-27T07:32:00Z"),
        ("mixedarr", '[1, "x", 2.5]'),
        ("bigarr", "[" + ", ".join(["0"] * 20000) + "]"),
        ("deeparr", deep_arr),
        ("deeptab", deep_tab),
    ]

# Plugin config keys (docs/plugins/*.md), keyed by a substring of the library
PLUGIN_KEYS = {
    "anl": ["inject", "mode", "points", "d_attn", "heads", "hidden_mult", "activation", "zero_init"],
    "denoiser_guidance": ["preset", "labels", "num_classes", "points", "timesteps", "layers", "channels",
                          "steps", "lr", "batch", "pool", "validation", "feature_noise", "guide", "lambda",
                          "reject", "threshold", "class_embedding", "label_dropout", "cfg_weight",
                          "log_every"],
    "sdft": ["lambda_distill", "gamma", "lambda_aux", "gamma_aux", "k", "aux", "aux_noise"],
    "tgdp": ["w", "network", "hidden", "depth", "channels", "time_dim", "classifier_steps",
             "time_classifier_steps", "guidance_steps", "lr", "batch", "eta1", "eta2", "source",
             "source_samples", "conditional", "num_classes", "label_map", "max_ratio", "log_every"],
}

# Keys whose large values only mean "a lot of work": not run with huge values
WORK_KEY_RE = re.compile(r"(steps|count|limit|holdout|batch|timesteps|pool|validation|samples|"
                         r"hidden|depth|channels|resolution|layers|d_attn|heads|hidden_mult|num_classes|"
                         r"time_dim|blocks|max_attempts_factor|kid_subset|grid|every)$")

FINDING_PATTERNS = ["panicked", "RUST_BACKTRACE", "memory allocation of", "capacity overflow",
                    "stack overflow", "SIGSEGV", "Segmentation fault", "double free", "corrupted"]

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def rel(path, start):
    return os.path.relpath(path, start)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    with open(path, mode) as f:
        f.write(data)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def short(s, n=300):
    s = s if isinstance(s, str) else repr(s)
    return s if len(s) <= n else s[: n // 2] + f"…[{len(s)} chars]…" + s[-n // 3:]


def tail_lines(text, n=25, width=400):
    lines = text.rstrip("\n").split("\n")[-n:]
    return "\n".join(short(l, width) for l in lines)


def normalise(msg):
    """A message with its variable parts (paths, numbers, quoted values) blanked."""
    m = re.sub(r"`[^`]*`", "`Q`", msg)
    m = re.sub(r"\"[^\"]*\"", '"Q"', m)
    m = re.sub(r"'[^']*'", "'Q'", m)
    m = re.sub(r"(/[\w.\-+]+)+/?", "PATH", m)
    m = re.sub(r"[\w.\-]+\.(toml|json|safetensors|pt|png|csv|jpg)\b", "FILE", m)
    m = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", m)
    m = re.sub(r"\s+", " ", m)
    return m.strip()[:200]


def first_error_line(stderr):
    for line in stderr.splitlines():
        s = line.strip()
        if s.startswith("error") or s.startswith("Error"):
            return s
    for line in stderr.splitlines():
        if line.strip():
            return line.strip()
    return ""

# --------------------------------------------------------------------------
# PNG writer (for the generated image folder)
# --------------------------------------------------------------------------

def png_chunk(typ, data):
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data) & 0xFFFFFFFF)


def png_bytes(w, h, pixel, color_type=2, bit_depth=8, ihdr_wh=None):
    """pixel(x, y) -> tuple of channel values (8-bit)."""
    chans = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    rows = []
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            v = pixel(x, y)
            for c in range(chans):
                if bit_depth == 16:
                    row += struct.pack(">H", v[c] * 257)
                else:
                    row.append(v[c])
        rows.append(bytes(row))
    iw, ih = ihdr_wh or (w, h)
    ihdr = struct.pack(">IIBBBBB", iw, ih, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + png_chunk(b"IEND", b""))


def shape_image(i, size=16):
    cx, cy, r = size // 2 + (i % 3) - 1, size // 2 + (i % 2), size // 4 + i % 3
    col = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)][i % 4]

    def pix(x, y):
        inside = (abs(x - cx) + abs(y - cy) <= r) if i % 2 else ((x - cx) ** 2 + (y - cy) ** 2 <= r * r)
        return col if inside else (0, 0, 0)

    def mask(x, y):
        v = pix(x, y)
        return (1,) if v != (0, 0, 0) else (0,)
    return pix, mask


def png_with_ihdr(data, w=None, h=None, depth=None, ctype=None, interlace=None):
    """Rewrite a PNG's IHDR fields (keeping a valid CRC)."""
    assert data[12:16] == b"IHDR"
    ow, oh, od, oc, comp, filt, inter = struct.unpack(">IIBBBBB", data[16:29])
    ihdr = struct.pack(">IIBBBBB", ow if w is None else w, oh if h is None else h, od if depth is None else depth,
                       oc if ctype is None else ctype, comp, filt, inter if interlace is None else interlace)
    return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]

# --------------------------------------------------------------------------
# Manifest parsing (line level, tolerant)
# --------------------------------------------------------------------------

KEY_LINE = re.compile(r'^(\s*)([A-Za-z0-9_\-."]+)(\s*=\s*)(.*)$')


def split_value_comment(v):
    """Split `value  # comment` (strings may contain #)."""
    in_str, q, i = False, "", 0
    while i < len(v):
        c = v[i]
        if in_str:
            if c == "\\" and q == '"':
                i += 2
                continue
            if c == q:
                in_str = False
        elif c in "\"'":
            in_str, q = True, c
        elif c == "#":
            return v[:i].rstrip(), v[i:]
        i += 1
    return v.rstrip(), ""


def parse_lines(text):
    """[(line_index, section_path, key, value_text, comment)] for key lines; and section headers."""
    keys, headers = [], []
    section, plugin_idx, last_plugin = "", -1, None
    depth = 0
    for i, line in enumerate(text.split("\n")):
        s = line.strip()
        if depth > 0:  # inside a multi-line array
            depth += s.count("[") - s.count("]")
            continue
        if s.startswith("[[") and s.endswith("]]"):
            name = s[2:-2].strip()
            if name == "plugin":
                plugin_idx += 1
                section = f"plugin[{plugin_idx}]"
            else:
                section = name
            headers.append((i, section))
            continue
        if s.startswith("[") and "]" in s and "=" not in s.split("]")[0]:
            name = s[1:s.index("]")].strip()
            if name.startswith("plugin.") and plugin_idx >= 0:
                section = f"plugin[{plugin_idx}]" + name[len("plugin"):]
            else:
                section = name
            headers.append((i, section))
            continue
        m = KEY_LINE.match(line)
        if m and not s.startswith("#"):
            value, comment = split_value_comment(m.group(4))
            key = m.group(2).strip('"')
            path = f"{section}.{key}" if section else key
            opened = value.count("[") - value.count("]")
            multiline = opened > 0 or value.count("{") > value.count("}")
            keys.append((i, path, key, value, comment, multiline))
            if opened > 0:
                depth = opened
    return keys, headers


def plugins_of(text):
    """[(index, library)] from a parse (tomllib, falling back to regex)."""
    try:
        d = tomllib.loads(text)
        return [(i, str(p.get("library", ""))) for i, p in enumerate(d.get("plugin", []) or []) if isinstance(p, dict)]
    except Exception:
        libs = re.findall(r'^\s*library\s*=\s*"([^"]*)"', text, re.M)
        return list(enumerate(libs))


def plugin_kind(lib):
    for k in PLUGIN_KEYS:
        if k in lib:
            return k
    return None

# --------------------------------------------------------------------------
# Safetensors helpers
# --------------------------------------------------------------------------

def st_split(data):
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n].decode("utf-8")), data[8 + n:]


def st_join(header_obj, body, raw_header=None, pad=True):
    h = raw_header if raw_header is not None else json.dumps(header_obj, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + body


def safetensors_mutations(data, rng, tag):
    """[(description, bytes)] mutants of a safetensors file."""
    out = []
    n, hdr, body = st_split(data)
    size = len(data)
    tensors = [k for k in hdr if k != "__metadata__"]
    rng_t = rng.choice(tensors)
    # header length field
    for v in [0, 1, 7, n - 1, n + 1, size - 8, size, size + 1, 2 ** 32, 2 ** 63, 2 ** 64 - 1]:
        out.append((f"{tag}: header length field set to {v} (was {n})", struct.pack("<Q", v) + data[8:]))
    # flipped bytes in the first 8+n bytes
    for k in [1, 1, 1, 2, 3, 5, 8, 16]:
        b = bytearray(data)
        pos = sorted(rng.randrange(0, 8 + n) for _ in range(k))
        for p in pos:
            b[p] = rng.choice([0x00, 0xFF, 0x22, 0x7B, 0x7D, 0x5B, 0x2C, 0x30, 0x39, rng.randrange(256)])
        out.append((f"{tag}: bytes at offsets {pos} of the header set to random values", bytes(b)))
    # truncation
    for cut in [0, 4, 8, 8 + n // 2, 8 + n, 8 + n + 1, 8 + n + len(body) // 2, size - 1]:
        out.append((f"{tag}: truncated to {cut} of {size} bytes", data[:cut]))
    # dtype
    for dt in ["F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "XYZ", "", 1, None]:
        h = copy.deepcopy(hdr)
        h[rng_t]["dtype"] = dt
        out.append((f"{tag}: dtype of `{rng_t}` set to {json.dumps(dt)}", st_join(h, body)))
    # shapes
    shp = hdr[rng_t]["shape"]
    for sh in [[], [0], [1], [-1], [2 ** 63], [2 ** 64], [2 ** 32, 2 ** 32], [2 ** 40, 2 ** 40, 2 ** 40],
               shp + [1], shp[::-1], shp[:-1], [1.5], "x", None, [x * 2 for x in shp]]:
        h = copy.deepcopy(hdr)
        h[rng_t]["shape"] = sh
        out.append((f"{tag}: shape of `{rng_t}` {shp} set to {json.dumps(sh)}", st_join(h, body)))
    # offsets
    a, b_ = hdr[rng_t]["data_offsets"]
    for off in [[0, 0], [b_, a], [a, len(body) + 4], [len(body) + 4, len(body) + 8], [a, 2 ** 64 - 1],
                [2 ** 63, 2 ** 63 + (b_ - a)], [-1, b_], [a], [a, b_, 0], None, [0, b_ - a]]:
        h = copy.deepcopy(hdr)
        h[rng_t]["data_offsets"] = off
        out.append((f"{tag}: data_offsets of `{rng_t}` {[a, b_]} set to {json.dumps(off)}", st_join(h, body)))
    # structure
    h = copy.deepcopy(hdr)
    del h[rng_t]
    out.append((f"{tag}: tensor `{rng_t}` removed from the header", st_join(h, body)))
    h = copy.deepcopy(hdr)
    h["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    out.append((f"{tag}: an extra tensor `extra.weight` added", st_join(h, body)))
    h = copy.deepcopy(hdr)
    h[rng_t + "x"] = h.pop(rng_t)
    out.append((f"{tag}: tensor `{rng_t}` renamed to `{rng_t}x`", st_join(h, body)))
    raw = json.dumps(hdr, separators=(",", ":"))
    dup = raw[:-1] + "," + json.dumps(rng_t) + ":" + json.dumps({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}) + "}"
    out.append((f"{tag}: tensor `{rng_t}` listed twice in the header JSON", st_join(None, body, dup.encode())))
    h = copy.deepcopy(hdr)
    h["__metadata__"] = {"format": 1, "x": [1, 2], "y": None}
    out.append((f"{tag}: __metadata__ with non-string values", st_join(h, body)))
    out.append((f"{tag}: header JSON is a list", st_join(None, body, b"[1,2,3]")))
    out.append((f"{tag}: header JSON invalid UTF-8", st_join(None, body, raw.encode()[:-2] + b"\xff\xfe}")))
    out.append((f"{tag}: header JSON followed by NUL padding", st_join(None, body, raw.encode() + b"\x00" * 8, pad=False)))
    out.append((f"{tag}: empty file", b""))
    return out

# --------------------------------------------------------------------------
# Case generation
# --------------------------------------------------------------------------

class Case:
    __slots__ = ("id", "kind", "seed", "desc", "make", "touched", "value_label", "names", "results",
                 "manifest", "sets", "extra_cmds", "cleanup", "text", "runnable")

    def __init__(self, kind, seed, desc, make, touched=None, value_label=None, names=(), runnable=True):
        self.kind, self.seed, self.desc, self.make = kind, seed, desc, make
        self.touched, self.value_label, self.names = touched, value_label, list(names)
        self.results, self.sets, self.extra_cmds, self.cleanup = {}, [], [], []
        self.manifest, self.text, self.id, self.runnable = None, None, None, runnable


class Fuzzer:
    def __init__(self, args):
        self.args = args
        self.dtx = os.path.abspath(args.dtx)
        self.out = os.path.abspath(args.out)
        self.tree = os.path.join(self.out, "tree")
        self.mutdir = os.path.join(self.tree, "manifests", "fz-mut")
        self.rundir = os.path.join(self.out, "runs")
        self.rng = random.Random(args.seed)
        self.env = dict(os.environ)
        self.env["DTX_PLUGIN_PATH"] = os.environ.get("DTX_PLUGIN_PATH", os.path.dirname(self.dtx))
        self.env.pop("RUST_BACKTRACE", None)
        self.env.pop("RUST_LOG", None)
        self.start = time.time()
        self.results_f = None
        self.n_exec = collections.Counter()

    # ---------------- running dtx ----------------

    def preexec(self):
        lim = int(self.args.mem_limit_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def dtx_cmd(self, argv):
        return ["nice", "-n", "19", self.dtx] + argv

    @staticmethod
    def _head_tail(f, head=3000, tail=6000):
        """The text of an output file, its middle cut when long (a message can be hundreds of MB)."""
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        if size <= head + tail:
            return f.read().decode("utf-8", "replace"), size
        h = f.read(head)
        f.seek(size - tail)
        t = f.read()
        return h.decode("utf-8", "replace") + f"\n…[{size} bytes in all]…\n" + t.decode("utf-8", "replace"), size

    def exec(self, argv, timeout, cwd=None):
        cmd = self.dtx_cmd(argv)
        t0 = time.time()
        with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
            p = subprocess.Popen(cmd, cwd=cwd or self.tree, env=self.env, stdout=fo, stderr=fe,
                                 stdin=subprocess.DEVNULL, preexec_fn=self.preexec, start_new_session=True)
            timed_out = False
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the group of the process started here
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(f"warning: pid {p.pid} did not die after SIGKILL", file=sys.stderr)
            so, _ = self._head_tail(fo, 0, 4000)
            se, se_size = self._head_tail(fe)
        self.n_exec[argv[0]] += 1
        return {"argv": argv, "rc": p.returncode, "timed_out": timed_out, "wall": round(time.time() - t0, 2),
                "stdout": so, "stderr": se, "stderr_bytes": se_size}

    # ---------------- the tree ----------------

    def setup(self):
        src = os.path.abspath(self.args.src)
        if os.path.exists(self.tree):
            shutil.rmtree(self.tree)
        if os.path.exists(self.rundir):
            shutil.rmtree(self.rundir)
        os.makedirs(self.tree)
        shutil.copytree(os.path.join(src, "manifests"), os.path.join(self.tree, "manifests"),
                        ignore=shutil.ignore_patterns("runs"))
        shutil.copytree(os.path.join(src, "tests", "manifests"), os.path.join(self.tree, "tests", "manifests"))
        shutil.copytree(os.path.join(src, "tests", "fixtures"), os.path.join(self.tree, "tests", "fixtures"))
        os.mkfifo(os.path.join(self.tree, "fifo"))
        self.make_data()
        self.make_seed_manifests()
        self.make_seed_runs()

    def make_data(self):
        d = os.path.join(self.tree, "manifests", "data")
        rows = ["file,label,class"]
        for i in range(8):
            pix, mask = shape_image(i)
            write(os.path.join(d, "imgs", f"{i:02d}.png"), png_bytes(16, 16, pix))
            write(os.path.join(d, "masks", f"{i:02d}.png"), png_bytes(16, 16, mask, color_type=0))
            cls = "ab"[i % 2]
            write(os.path.join(d, "imgs_sub", cls, f"{i:02d}.png"), png_bytes(16, 16, pix))
            rows.append(f"{i:02d}.png,{i % 2},{cls}")
        write(os.path.join(d, "imgs", "labels.csv"), "\n".join(rows) + "\n")
        for i in range(4):
            pix, _ = shape_image(i + 8, 24)
            write(os.path.join(d, "ref", f"r{i}.png"), png_bytes(24, 24, pix))
        for i in range(2):
            pix, _ = shape_image(i + 3)
            write(os.path.join(d, "cond", f"c{i}.png"), png_bytes(16, 16, pix))

    def make_seed_manifests(self):
        m = os.path.join(self.tree, "manifests")
        write(os.path.join(m, "fz-folder.toml"), """# fuzz seed: an image folder target with masks and a folder reference
[run]
name = "fz-folder"
seed = 0
output_dir = "../runs"

[source]
kind = "diffusers"
path = "models/shapes-source"

[target]
dataset = "data/imgs"
resolution = 16
holdout = 2
flip = true
masks = "data/masks"

[train]
steps = 2
batch = 2
lr = 1e-4
trainable = "all"
validate_every = 1

[sample]
sampler = "ddim"
steps = 2
count = 2
batch = 2

[eval]
metrics = ["kid", "fd", "nearest"]
reference = "data/ref"
""")
        write(os.path.join(m, "fz-folder-labels.toml"), """# fuzz seed: an image folder labelled by labels.csv, class-conditional fine-tune with rejection
[run]
name = "fz-folder-labels"
seed = 0
output_dir = "../runs"

[source]
kind = "diffusers"
path = "models/shapes-source"

[target]
dataset = "data/imgs"
labels = true
holdout = 2

[train]
steps = 2
batch = 2
lr = 2e-4
trainable = "all"

[[plugin]]
name = "denoiser-guidance"
library = "dtx_plugin_denoiser_guidance"

[plugin.config]
preset = "rejection"
num_classes = 2
class_embedding = true
channels = 4
steps = 3
pool = 4
batch = 2
validation = 2
threshold = 0.0

[sample]
sampler = "ddim"
steps = 2
count = 2
batch = 2
label = 1
""")
        write(os.path.join(m, "fz-folder-sub.toml"), """# fuzz seed: an image folder labelled by class sub-folders
[run]
name = "fz-folder-sub"
seed = 0
output_dir = "../runs"

[source]
kind = "diffusers"
path = "models/shapes-source"

[target]
dataset = "data/imgs_sub"
labels = true
limit = 6

[[plugin]]
name = "denoiser-guidance"
library = "dtx_plugin_denoiser_guidance"

[plugin.config]
num_classes = 2
timesteps = [300]
channels = 4
steps = 3
pool = 4
batch = 2
validation = 2

[sample]
sampler = "ddim"
steps = 2
count = 2
batch = 2
label = 0
""")
        write(os.path.join(m, "fz-folder-anl.toml"), """# fuzz seed: ANL conditioned on a folder of condition images
[run]
name = "fz-folder-anl"
seed = 0
output_dir = "../runs"

[source]
kind = "diffusers"
path = "models/shapes-source"

[target]
dataset = "data/imgs"
limit = 4

[condition]
encoder = "unet"
points = ["mid.res.*"]
t = 50
grid = 2

[train]
steps = 2
batch = 2
lr = 1e-3

[[plugin]]
name = "anl"
library = "dtx_plugin_anl"

[plugin.config]
points = ["mid.res.*"]

[sample]
steps = 2
count = 2
batch = 2
condition = "data/cond"
mask_rate = 0.25
""")

    def make_seed_runs(self):
        """Finished runs used as `kind = "dtx"` sources (and for `dtx sample`)."""
        self.seed_runs = {}
        sr = os.path.join(self.tree, "seedruns")
        for name, man, extra in [
            ("gmm-mlp", "tests/manifests/ok/gmm-mlp.toml", ["--set", "train.steps=2", "--set", "sample.count=4",
                                                            "--set", "sample.batch=4", "--set", "sample.steps=2"]),
            ("anl-unet", "tests/manifests/ok/anl-unet.toml", ["--set", "train.steps=1", "--set", "sample.count=2",
                                                     "--set", "sample.batch=2", "--set", "sample.steps=2"]),
            ("shapes-unet", "tests/manifests/ok/shapes-unet.toml", ["--set", "train.steps=1", "--set", "sample.count=2",
                                                                    "--set", "sample.batch=2", "--set", "sample.steps=2",
                                                                    "--set", "train.validate_every=1"]),
        ]:
            r = self.exec(["run", "--quiet", man, "--set", f"run.output_dir={sr}"] + extra, 300)
            if r["rc"] != 0:
                print(f"warning: seed run {man} failed (rc {r['rc']}): {tail_lines(r['stderr'], 5)}", file=sys.stderr)
                continue
            self.seed_runs[name] = os.path.join(sr, name)
        m = os.path.join(self.tree, "manifests")
        if "gmm-mlp" in self.seed_runs:
            write(os.path.join(m, "fz-dtx-source.toml"), """# fuzz seed: a finished dtx run as the source
[run]
name = "fz-dtx-source"
seed = 1
output_dir = "../runs"

[source]
kind = "dtx"
path = "../seedruns/gmm-mlp"

[target]
dataset = "builtin:gmm"
limit = 64
config = { preset = "target" }

[train]
steps = 2
batch = 16
lr = 1e-3
trainable = "all"
timesteps = 100

[sample]
steps = 2
count = 4
batch = 4
""")
        if "shapes-unet" in self.seed_runs:
            write(os.path.join(m, "fz-dtx-unet.toml"), """# fuzz seed: a finished dtx U-Net run as the source
[run]
name = "fz-dtx-unet"
seed = 1
output_dir = "../runs"

[source]
kind = "dtx"
path = "../seedruns/shapes-unet"

[target]
dataset = "builtin:shapes"
limit = 4
config = { preset = "target" }

[train]
steps = 1
batch = 2
trainable = "all"
timesteps = 100

[sample]
steps = 2
count = 2
batch = 2
""")

    def seeds(self):
        out = []
        for folder in ["manifests", "tests/manifests/ok"]:
            for f in sorted(os.listdir(os.path.join(self.tree, folder))):
                if f.endswith(".toml"):
                    out.append(f"{folder}/{f}")
        return out

    # ---------------- manifest mutants ----------------

    def manifest_case(self, kind, seed, desc, new_text, touched=None, label=None, names=(), sets=(), runnable=True):
        def make(case, new_text=new_text, sets=list(sets)):
            d = os.path.dirname(os.path.join(self.tree, seed))
            path = os.path.join(d, f"fz_{case.id}.toml")
            write(path, new_text.encode("utf-8", "surrogateescape") if isinstance(new_text, str) else new_text)
            case.manifest = rel(path, self.tree)
            case.sets = list(sets)
            case.text = new_text
            case.cleanup.append(path)
        base = os.path.basename(seed)
        return Case(kind, seed, desc, make, touched, label, names=[f"fz_", base] + list(names), runnable=runnable)

    def gen_manifest_cases(self):
        cases = collections.defaultdict(list)
        edges = edge_values(self.tree)
        for seed in self.seeds():
            text = open(os.path.join(self.tree, seed), encoding="utf-8").read()
            lines = text.split("\n")
            keys, headers = parse_lines(text)
            section_names = {h[1].split("[")[0].split(".")[0] for h in headers}
            # value replacement
            for (i, path, key, value, comment, multiline) in keys:
                for label, ev in edges:
                    new = lines[:]
                    m = KEY_LINE.match(lines[i])
                    if multiline:
                        # replace the whole multi-line value: drop continuation lines
                        j = i + 1
                        depth = value.count("[") - value.count("]") + value.count("{") - value.count("}")
                        while j < len(lines) and depth > 0:
                            depth += lines[j].count("[") - lines[j].count("]") + lines[j].count("{") - lines[j].count("}")
                            j += 1
                        new[i:j] = [m.group(1) + m.group(2) + m.group(3) + ev]
                    else:
                        new[i] = m.group(1) + m.group(2) + m.group(3) + ev + (" " + comment if comment else "")
                    cases["manifest.value"].append(self.manifest_case(
                        "manifest.value", seed, f"line {i + 1} `{short(lines[i], 80)}` -> `{key} = {short(ev, 60)}`",
                        "\n".join(new), touched=path, label=label, names=[key, path.split(".")[0].split("[")[0]]))
                # scalars inside inline tables / arrays
                if ("{" in value or "[" in value) and not multiline:
                    toks = list(re.finditer(r'"[^"]*"|-?\d+(\.\d+)?(e-?\d+)?|true|false', value))
                    for t in toks:
                        inner_key = re.findall(r"(\w+)\s*=\s*$", value[:t.start()])
                        for label, ev in self.rng.sample(edges, 8):
                            nv = value[:t.start()] + ev + value[t.end():]
                            new = lines[:]
                            m = KEY_LINE.match(lines[i])
                            new[i] = m.group(1) + m.group(2) + m.group(3) + nv
                            tp = path + ("." + inner_key[0] if inner_key else "[]")
                            cases["manifest.inline"].append(self.manifest_case(
                                "manifest.inline", seed, f"line {i + 1}: `{short(t.group(0), 40)}` in `{short(value, 60)}` -> {short(ev, 60)}",
                                "\n".join(new), touched=tp, label=label,
                                names=[key] + inner_key + [path.split(".")[0]]))
            # line deletion / duplication
            for i, line in enumerate(lines):
                if not line.strip() or line.strip().startswith("#"):
                    continue
                new = lines[:i] + lines[i + 1:]
                cases["manifest.delete_line"].append(self.manifest_case(
                    "manifest.delete_line", seed, f"line {i + 1} `{short(line, 80)}` deleted", "\n".join(new),
                    touched=self.path_at(keys, headers, i), names=self.names_at(keys, headers, i)))
                new = lines[:i + 1] + [line] + lines[i + 1:]
                cases["manifest.dup_line"].append(self.manifest_case(
                    "manifest.dup_line", seed, f"line {i + 1} `{short(line, 80)}` duplicated", "\n".join(new),
                    touched=self.path_at(keys, headers, i), names=self.names_at(keys, headers, i)))
            # section duplication
            for hi, (li, sec) in enumerate(headers):
                end = headers[hi + 1][0] if hi + 1 < len(headers) else len(lines)
                block = lines[li:end]
                for where in ["after", "end"]:
                    if where == "after":
                        new = lines[:end] + block + lines[end:]
                    else:
                        new = lines + [""] + block
                    cases["manifest.dup_section"].append(self.manifest_case(
                        "manifest.dup_section", seed, f"section `{lines[li].strip()}` (lines {li + 1}-{end}) duplicated {where}",
                        "\n".join(new), touched=sec, names=[sec.split("[")[0].split(".")[-1], lines[li].strip()],
                        runnable=False))
            # truncation and byte flips
            raw = text.encode("utf-8")
            for _ in range(12):
                cut = self.rng.randrange(0, len(raw))
                cases["manifest.truncate"].append(self.manifest_case(
                    "manifest.truncate", seed, f"truncated at byte {cut} of {len(raw)}", raw[:cut], runnable=False))
            for _ in range(16):
                b = bytearray(raw)
                k = self.rng.choice([1, 1, 2, 4])
                pos = sorted(self.rng.randrange(len(b)) for _ in range(k))
                vals = []
                for p in pos:
                    b[p] = self.rng.choice([0x00, 0xFF, 0xC3, 0x22, 0x27, 0x5B, 0x5D, 0x3D, 0x0A, 0x23, 0x2E,
                                            self.rng.randrange(256), b[p] ^ (1 << self.rng.randrange(8))])
                    vals.append(f"{p}:{raw[p]:#04x}->{b[p]:#04x}")
                cases["manifest.byteflip"].append(self.manifest_case(
                    "manifest.byteflip", seed, f"bytes flipped: {', '.join(vals)}", bytes(b), runnable=False))
            # plugin config keys
            for pi, lib in plugins_of(text):
                pk = plugin_kind(lib)
                if not pk:
                    continue
                for key in PLUGIN_KEYS[pk]:
                    for label, ev in edges:
                        new = self.set_plugin_key(lines, headers, keys, pi, key, ev)
                        if new is None:
                            continue
                        cases["manifest.plugin_config"].append(self.manifest_case(
                            "manifest.plugin_config", seed, f"plugin[{pi}] ({pk}) config `{key} = {short(ev, 60)}`",
                            "\n".join(new), touched=f"plugin[{pi}].config.{key}", label=label,
                            names=[key, "plugin", "config"]))
        # --set overrides
        deep_key = ".".join(["a"] * 5000)
        overrides = [
            "train.steps", "=1", ".=1", "a..b=1", "train.steps=", "plugin[0].config.x=1",
            "plugin[18446744073709551616].name=x", "plugin[-1].name=x", "plugin[0.5].x=1", "plugin.99.name=x",
            "run=1", "run.name.x=1", "train.ema.decay.x=1", '"unterminated=1', "plugin[0]=1", "plugin=[]",
            "plugin=1", "run.name=" + "x" * 100000, "source.config.hidden=1e308", "x" * 10000 + "=1",
            "[[plugin]]=1", 'run."a.b"=1', deep_key + "=1", "run.seed=" + "[" * 5000 + "]" * 5000,
            "run.seed={" + " a = {" * 2000 + "}" * 2000 + "}", "train.steps=nan", "run.seed=-1",
            "train.batch=18446744073709551616", "source.path=/dev/zero", "target.dataset=/dev/zero",
            "plugin[0].config=[]", "plugin[0].config=1", "source=[]", "target=\"x\"",
            "sample.condition=/dev/zero", "eval.reference=/dev/null", "condition.path=/dev/zero",
            "run.output_dir=/dev/null", "run.output_dir=/proc", "source.config.hidden=-1",
            "plugin[0]]=1", "plugin[[0]=1", "plugin[]=1", "plugin[0].config.\"\"=1", "\"\"=1", "train.=1",
        ]
        for seed in ["tests/manifests/ok/sdft-mlp.toml", "manifests/quickstart.toml", "tests/manifests/ok/adm-pt.toml"]:
            text = open(os.path.join(self.tree, seed), encoding="utf-8").read()
            for ov in overrides:
                cases["manifest.set_override"].append(self.manifest_case(
                    "manifest.set_override", seed, f"--set {short(ov, 100)!r}", text, sets=["--set", ov],
                    touched=ov.split("=")[0], names=[short(ov.split("=")[0], 30), "--set", "override"], runnable=False))
            for ov in ["train.steps=1"] * 2000:
                pass
            cases["manifest.set_override"].append(self.manifest_case(
                "manifest.set_override", seed, "--set run.seed=1 given 5000 times", text,
                sets=["--set", "run.seed=1"] * 5000, names=["run.seed"], runnable=False))
        return cases

    @staticmethod
    def path_at(keys, headers, i):
        for k in keys:
            if k[0] == i:
                return k[1]
        for li, sec in headers:
            if li == i:
                return sec
        return None

    @staticmethod
    def names_at(keys, headers, i):
        for k in keys:
            if k[0] == i:
                return [k[2], k[1].split(".")[0].split("[")[0]]
        for li, sec in headers:
            if li == i:
                return [sec.split("[")[0]]
        return []

    @staticmethod
    def set_plugin_key(lines, headers, keys, pi, key, ev):
        """Lines with plugin[pi].config.key = ev (a [plugin.config] table, created if needed)."""
        sec = f"plugin[{pi}]"
        cfg = f"plugin[{pi}].config"
        for k in keys:
            if k[1] == f"{cfg}.{key}" and not k[5]:
                new = lines[:]
                m = KEY_LINE.match(lines[k[0]])
                new[k[0]] = m.group(1) + m.group(2) + m.group(3) + ev
                return new
        for k in keys:
            if k[1] == f"{sec}.config":  # inline config: not handled here
                return None
        for hi, (li, s) in enumerate(headers):
            if s == cfg:
                return lines[:li + 1] + [f"{key} = {ev}"] + lines[li + 1:]
        for hi, (li, s) in enumerate(headers):
            if s == sec:
                end = headers[hi + 1][0] if hi + 1 < len(headers) else len(lines)
                return lines[:end] + ["[plugin.config]", f"{key} = {ev}", ""] + lines[end:]
        return None

    # ---------------- model mutants ----------------

    def file_case(self, kind, seed, desc, files, sets_fn, names, inspect=None, sample=None, runnable=True):
        """files: {relative path inside the mutant folder: bytes or callable(folder)}; sets_fn(folder) -> --set list."""
        def make(case):
            case.extra_cmds = []
            folder = os.path.join(self.mutdir, case.id)
            os.makedirs(folder, exist_ok=True)
            for relp, data in files.items():
                p = os.path.join(folder, relp)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                if callable(data):
                    data(p)
                else:
                    write(p, data)
            case.manifest = seed
            case.sets = sets_fn(folder)
            case.cleanup.append(folder)
            if inspect:
                case.extra_cmds.append(("inspect", inspect(folder)))
            if sample:
                case.extra_cmds.append(("sample", sample(folder)))
        return Case(kind, seed, desc, make, touched=None, names=names, runnable=runnable)

    @staticmethod
    def copy_folder(src, skip=()):
        """A files dict that copies every file of src (except skip) into the mutant folder."""
        files = {}
        for root, _, fs in os.walk(src):
            for f in fs:
                p = os.path.join(root, f)
                r = os.path.relpath(p, src)
                if r in skip:
                    continue
                files[r] = (lambda dst, p=p: shutil.copyfile(p, dst))
        return files

    def json_value_mutants(self, obj, prefix=""):
        """[(path, new_obj)] with one value (recursively) replaced by an edge JSON value."""
        edges = [0, -1, 1, 2 ** 64, 2 ** 63 - 1, 2 ** 32, 1e308, -0.0, 1e-320, "", "x", True, None, [], {}, [0],
                 [2 ** 40], list(range(64)), "A" * 10000, 0.5]
        out = []
        if isinstance(obj, dict):
            for k, v in obj.items():
                for e in edges:
                    o = copy.deepcopy(obj)
                    o[k] = e
                    out.append((f"{prefix}{k} = {short(json.dumps(e), 40)}", o, k))
                o = copy.deepcopy(obj)
                del o[k]
                out.append((f"{prefix}{k} deleted", o, k))
                if isinstance(v, (dict, list)):
                    for pth, sub, kk in self.json_value_mutants(v, f"{prefix}{k}."):
                        o = copy.deepcopy(obj)
                        o[k] = sub
                        out.append((pth, o, kk))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                for e in [0, -1, 2 ** 63 - 1, 2 ** 40, 1.5, "x", None, []]:
                    o = copy.deepcopy(obj)
                    o[i] = e
                    out.append((f"{prefix}[{i}] = {json.dumps(e)}", o, prefix.rstrip(".").split(".")[-1]))
        return out

    def gen_model_cases(self):
        cases = collections.defaultdict(list)
        T = self.tree
        # ---- diffusers folders ----
        for seed, model, names, extra in [
            ("manifests/quickstart.toml", "manifests/models/shapes-source", ["shapes-source"], []),
            # config only (no weights): `init = "random"` in the seed, nothing to inspect
            ("tests/manifests/ok/shapes-unet.toml", "tests/fixtures/models/tiny-diffusers", ["tiny-diffusers"], None),
            ("tests/manifests/ok/shapes-unet.toml", "tests/fixtures/unet/small", ["small"],
             ["--set", "source.init=pretrained"]),
            ("tests/manifests/ok/sdft-unet.toml", "tests/fixtures/unet/class-scale-shift", ["class-scale-shift"],
             ["--set", "source.init=pretrained"]),
        ]:
            src = os.path.join(T, model)
            cfg_text = open(os.path.join(src, "config.json")).read()
            cfg = json.loads(cfg_text)
            sets = (lambda f, extra=extra: ["--set", f"source.path={f}"] + (extra or []))
            insp = (lambda f: ["model", "inspect", f]) if extra is not None else None
            for desc, obj, key in self.json_value_mutants(cfg):
                files = self.copy_folder(src, skip=("config.json",))
                files["config.json"] = json.dumps(obj, indent=1).encode()
                cases["model.diffusers_config"].append(self.file_case(
                    "model.diffusers_config", seed, f"{model}/config.json: {desc}", files, sets,
                    names=["config.json", key] + names, inspect=insp))
            for label, data in [("truncated", cfg_text[: len(cfg_text) // 2]), ("empty", ""), ("not an object", "[1]"),
                                ("deeply nested", "[" * 100000 + "]" * 100000), ("invalid utf-8", cfg_text.encode()[:40] + b"\xff\xfe" + cfg_text.encode()[40:]),
                                ("NaN literal", cfg_text.replace('"sample_size": 16', '"sample_size": NaN')),
                                ("duplicate key", cfg_text.replace('"in_channels": 3', '"in_channels": 3, "in_channels": 300'))]:
                files = self.copy_folder(src, skip=("config.json",))
                files["config.json"] = data.encode() if isinstance(data, str) else data
                cases["model.diffusers_config"].append(self.file_case(
                    "model.diffusers_config", seed, f"{model}/config.json: {label}", files, sets,
                    names=["config.json"] + names, inspect=insp))
            files = self.copy_folder(src, skip=("config.json",))
            cases["model.diffusers_config"].append(self.file_case(
                "model.diffusers_config", seed, f"{model}/config.json missing", files, sets,
                names=["config.json"] + names, inspect=insp))
            files = self.copy_folder(src, skip=("config.json",))
            files["config.json"] = lambda p: os.symlink("/dev/zero", p)
            cases["model.diffusers_config"].append(self.file_case(
                "model.diffusers_config", seed, f"{model}/config.json is a link to /dev/zero", files, sets,
                names=["config.json"] + names, inspect=insp))
            stf = os.path.join(src, "diffusion_pytorch_model.safetensors")
            if os.path.exists(stf):
                data = read_bytes(stf)
                for desc, mut in safetensors_mutations(data, self.rng, f"{model}/diffusion_pytorch_model.safetensors"):
                    files = self.copy_folder(src, skip=("diffusion_pytorch_model.safetensors",))
                    files["diffusion_pytorch_model.safetensors"] = mut
                    cases["model.safetensors"].append(self.file_case(
                        "model.safetensors", seed, desc, files, sets,
                        names=["diffusion_pytorch_model.safetensors"] + names, inspect=insp))
                for target in ["/dev/zero", "/dev/null", os.path.join(T, "fifo")]:
                    files = self.copy_folder(src, skip=("diffusion_pytorch_model.safetensors",))
                    files["diffusion_pytorch_model.safetensors"] = lambda p, t=target: os.symlink(t, p)
                    cases["model.safetensors"].append(self.file_case(
                        "model.safetensors", seed, f"{model}/diffusion_pytorch_model.safetensors is a link to {target}",
                        files, sets, names=["diffusion_pytorch_model.safetensors"] + names, inspect=insp))
                files = self.copy_folder(src, skip=("diffusion_pytorch_model.safetensors",))
                files["diffusion_pytorch_model.safetensors/x"] = b""
                cases["model.safetensors"].append(self.file_case(
                    "model.safetensors", seed, f"{model}/diffusion_pytorch_model.safetensors is a folder",
                    files, sets, names=["diffusion_pytorch_model.safetensors"] + names, inspect=insp))
        # ---- ADM ----
        adm_full = os.path.join(T, "tests/fixtures/adm/full")
        adm_cfg = os.path.join(adm_full, "config.toml")
        seed = "tests/manifests/ok/adm-pt.toml"
        ptdata = read_bytes(os.path.join(adm_full, "model.pt"))
        for desc, mut in self.pt_mutations(ptdata):
            cases["model.adm_pt"].append(self.file_case(
                "model.adm_pt", seed, f"tests/fixtures/adm/full/model.pt: {desc}", {"model.pt": mut},
                lambda f: ["--set", f"source.path={f}/model.pt"], names=["model.pt", "data.pkl"],
                inspect=lambda f: ["model", "inspect", f"{f}/model.pt", "--config", adm_cfg]))
        for target in ["/dev/zero", "/dev/null", os.path.join(T, "fifo")]:
            cases["model.adm_pt"].append(self.file_case(
                "model.adm_pt", seed, f"ADM model.pt is a link to {target}",
                {"model.pt": lambda p, t=target: os.symlink(t, p)},
                lambda f: ["--set", f"source.path={f}/model.pt"], names=["model.pt"],
                inspect=lambda f: ["model", "inspect", f"{f}/model.pt", "--config", adm_cfg]))
        seed = "tests/manifests/ok/anl-adm.toml"
        plain_cfg = os.path.join(T, "tests/fixtures/adm/plain/config.toml")
        data = read_bytes(os.path.join(T, "tests/fixtures/adm/plain/model.safetensors"))
        for desc, mut in safetensors_mutations(data, self.rng, "tests/fixtures/adm/plain/model.safetensors"):
            cases["model.safetensors"].append(self.file_case(
                "model.safetensors", seed, desc, {"model.safetensors": mut},
                lambda f: ["--set", f"source.path={f}/model.safetensors"], names=["model.safetensors"],
                inspect=lambda f: ["model", "inspect", f"{f}/model.safetensors", "--config", plain_cfg]))
        # ---- CLIP ----
        seed = "tests/manifests/ok/anl-clip-unet.toml"
        clip = os.path.join(T, "tests/fixtures/clip/tiny-clip")
        ccfg = json.load(open(os.path.join(clip, "config.json")))
        sets = lambda f: ["--set", f"condition.path={f}"]
        for desc, obj, key in self.json_value_mutants(ccfg):
            files = self.copy_folder(clip, skip=("config.json",))
            files["config.json"] = json.dumps(obj, indent=1).encode()
            cases["model.clip"].append(self.file_case("model.clip", seed, f"tiny-clip/config.json: {desc}", files, sets,
                                                      names=["config.json", key, "condition", "clip"]))
        data = read_bytes(os.path.join(clip, "model.safetensors"))
        for desc, mut in safetensors_mutations(data, self.rng, "tiny-clip/model.safetensors"):
            files = self.copy_folder(clip, skip=("model.safetensors",))
            files["model.safetensors"] = mut
            cases["model.clip"].append(self.file_case("model.clip", seed, desc, files, sets,
                                                      names=["model.safetensors", "condition", "clip"]))
        tok = read_bytes(os.path.join(clip, "tokenizer.json"))
        tokobj = json.loads(tok)
        tok_muts = [("truncated", tok[: len(tok) // 2]), ("empty", b""), ("not JSON", b"\xff\xfe\x00"),
                    ("a JSON list", b"[]"), ("model removed", json.dumps({k: v for k, v in tokobj.items() if k != "model"}).encode())]
        if isinstance(tokobj.get("model"), dict):
            for k in list(tokobj["model"].keys()):
                for e in [None, {}, [], "x", 0, -1]:
                    o = copy.deepcopy(tokobj)
                    o["model"][k] = e
                    tok_muts.append((f"model.{k} = {json.dumps(e)}", json.dumps(o).encode()))
        for _ in range(10):
            b = bytearray(tok)
            p = self.rng.randrange(len(b))
            b[p] = self.rng.randrange(256)
            tok_muts.append((f"byte {p} set to {b[p]:#04x}", bytes(b)))
        for desc, mut in tok_muts:
            files = self.copy_folder(clip, skip=("tokenizer.json",))
            files["tokenizer.json"] = mut
            cases["model.clip"].append(self.file_case("model.clip", seed, f"tiny-clip/tokenizer.json: {desc}", files, sets,
                                                      names=["tokenizer.json", "condition", "clip"]))
        # ---- dtx runs as sources ----
        for name, seed in [("gmm-mlp", "manifests/fz-dtx-source.toml"), ("shapes-unet", "manifests/fz-dtx-unet.toml")]:
            if name not in self.seed_runs:
                continue
            src = self.seed_runs[name]
            sets = lambda f: ["--set", f"source.path={f}"]
            insp = lambda f: ["model", "inspect", f]
            samp = lambda f: ["sample", f, "--count", "2", "--steps", "2", "--out", os.path.join(f, "fz-samples")]
            mtext = open(os.path.join(src, "manifest.toml"), encoding="utf-8").read()
            mlines = mtext.split("\n")
            mkeys, _ = parse_lines(mtext)
            edges = edge_values(T)
            for (i, path, key, value, comment, multiline) in mkeys:
                for label, ev in self.rng.sample(edges, 6):
                    new = mlines[:]
                    m = KEY_LINE.match(mlines[i])
                    new[i] = m.group(1) + m.group(2) + m.group(3) + ev
                    files = self.copy_folder(src, skip=("manifest.toml",))
                    files["manifest.toml"] = "\n".join(new).encode()
                    cases["model.dtx_run"].append(self.file_case(
                        "model.dtx_run", seed, f"run folder {name}/manifest.toml line {i + 1} `{short(mlines[i], 60)}` -> `{key} = {short(ev, 40)}`",
                        files, sets, names=["manifest.toml", key], inspect=insp, sample=samp))
                files = self.copy_folder(src, skip=("manifest.toml",))
                files["manifest.toml"] = "\n".join(mlines[:i] + mlines[i + 1:]).encode()
                cases["model.dtx_run"].append(self.file_case(
                    "model.dtx_run", seed, f"run folder {name}/manifest.toml line {i + 1} `{short(mlines[i], 60)}` deleted",
                    files, sets, names=["manifest.toml", key], inspect=insp, sample=samp))
            # self-referencing run (a dtx source that points at itself)
            def selfref(p, mtext=mtext):
                t = re.sub(r'(?ms)^\[source\].*?(?=^\[)', '[source]\nkind = "dtx"\npath = "' + os.path.dirname(p) + '"\n\n', mtext)
                write(p, t)
            files = self.copy_folder(src, skip=("manifest.toml",))
            files["manifest.toml"] = selfref
            cases["model.dtx_run"].append(self.file_case(
                "model.dtx_run", seed, f"run folder {name}/manifest.toml: [source] is kind dtx pointing at the run itself",
                files, sets, names=["manifest.toml", "source"], inspect=insp, sample=samp))
            ck = os.path.join(src, "checkpoints", "latest.safetensors")
            data = read_bytes(ck)
            for desc, mut in safetensors_mutations(data, self.rng, f"{name}/checkpoints/latest.safetensors"):
                files = self.copy_folder(src, skip=("checkpoints/latest.safetensors",))
                files["checkpoints/latest.safetensors"] = mut
                cases["model.dtx_run"].append(self.file_case(
                    "model.dtx_run", seed, desc, files, sets, names=["latest.safetensors", "checkpoint"],
                    inspect=insp, sample=samp))
            files = self.copy_folder(src, skip=("checkpoints/latest.safetensors",))
            cases["model.dtx_run"].append(self.file_case(
                "model.dtx_run", seed, f"{name}/checkpoints/latest.safetensors removed", files, sets,
                names=["latest.safetensors", "checkpoint"], inspect=insp, sample=samp))
        return cases

    def pt_mutations(self, ptdata):
        """Mutants of a torch zip archive: the pickle's integers and bytes, entries, raw bytes."""
        out = []
        z = zipfile.ZipFile(__import__("io").BytesIO(ptdata))
        infos = z.infolist()
        entries = [(i.filename, z.read(i.filename)) for i in infos]
        pkl_name = next(n for n, _ in entries if n.endswith("data.pkl"))
        pkl = dict(entries)[pkl_name]

        def rezip(replace=None, drop=None, add=None):
            import io
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zo:
                for n, d in entries:
                    if n == drop:
                        continue
                    zo.writestr(n, replace[1] if replace and replace[0] == n else d)
                for n, d in (add or []):
                    zo.writestr(n, d)
            return buf.getvalue()

        out.append(("re-zipped unchanged (control)", rezip()))
        ops = list(pickletools.genops(pkl))
        int_ops = [(op, arg, pos) for op, arg, pos in ops if op.name in ("BININT", "BININT1", "BININT2", "LONG1")]
        str_ops = [(op, arg, pos) for op, arg, pos in ops if op.name in ("BINUNICODE", "SHORT_BINSTRING", "BINSTRING")]
        for op, arg, pos in self.rng.sample(int_ops, min(40, len(int_ops))):
            end = pos + 1 + {"BININT": 4, "BININT1": 1, "BININT2": 2}.get(op.name, 0)
            if op.name == "LONG1":
                end = pos + 2 + pkl[pos + 1]
            v = self.rng.choice([0, -1, 2 ** 31 - 1, -2 ** 31, 2 ** 64, 2 ** 62, 7])
            if -2 ** 31 <= v < 2 ** 31:
                enc = b"J" + struct.pack("<i", v)
            else:
                nb = (v.bit_length() + 8) // 8
                enc = b"\x8a" + bytes([nb]) + v.to_bytes(nb, "little", signed=True)
            new = pkl[:pos] + enc + pkl[end:]
            out.append((f"data.pkl: int {arg} at pickle offset {pos} set to {v}", rezip((pkl_name, new))))
        for op, arg, pos in self.rng.sample(str_ops, min(15, len(str_ops))):
            s = self.rng.choice(["", "x", "FloatStorage", "HalfStorage", "LongStorage", "cuda:0", "../x", "999"])
            enc = b"X" + struct.pack("<I", len(s.encode())) + s.encode()
            end = pos + 1 + 4 + len(arg.encode() if isinstance(arg, str) else arg) if op.name == "BINUNICODE" else None
            if end is None:
                continue
            new = pkl[:pos] + enc + pkl[end:]
            out.append((f"data.pkl: string {short(repr(arg), 40)} at pickle offset {pos} set to {s!r}", rezip((pkl_name, new))))
        for _ in range(12):
            b = bytearray(pkl)
            p = self.rng.randrange(len(b))
            b[p] = self.rng.randrange(256)
            out.append((f"data.pkl: byte {p} {pkl[p]:#04x} -> {b[p]:#04x}", rezip((pkl_name, bytes(b)))))
        for cut in [0, 1, len(pkl) // 2, len(pkl) - 1]:
            out.append((f"data.pkl truncated to {cut} of {len(pkl)} bytes", rezip((pkl_name, pkl[:cut]))))
        out.append(("data.pkl: deeply nested lists (stack depth)", rezip((pkl_name, b"\x80\x02" + b"]" * 0 + b"(" * 200000 + b"."))))
        out.append(("data.pkl: 100000 nested EMPTY_LIST+APPEND", rezip((pkl_name, b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b"."))))
        storages = [n for n, _ in entries if "/data/" in n]
        for n in self.rng.sample(storages, min(4, len(storages))):
            out.append((f"storage entry {n} removed", rezip(drop=n)))
            d = dict(entries)[n]
            out.append((f"storage entry {n} truncated to {len(d) // 2} bytes", rezip((n, d[: len(d) // 2]))))
        out.append((f"{pkl_name} removed", rezip(drop=pkl_name)))
        for cut in [0, 10, len(ptdata) // 2, len(ptdata) - 22, len(ptdata) - 1]:
            out.append((f"zip truncated to {cut} of {len(ptdata)} bytes", ptdata[:cut]))
        for _ in range(10):
            b = bytearray(ptdata)
            pos = sorted(self.rng.randrange(len(b)) for _ in range(self.rng.choice([1, 3])))
            for p in pos:
                b[p] = self.rng.randrange(256)
            out.append((f"zip bytes at {pos} set to random values", bytes(b)))
        # zip central directory claiming a huge entry
        b = bytearray(ptdata)
        eocd = b.rfind(b"PK\x05\x06")
        if eocd >= 0:
            cd_off = struct.unpack("<I", b[eocd + 16:eocd + 20])[0]
            bb = bytearray(b)
            bb[cd_off + 24:cd_off + 28] = struct.pack("<I", 0xFFFFFFFF)  # uncompressed size of first entry
            out.append(("zip central directory: first entry's uncompressed size 0xFFFFFFFF", bytes(bb)))
            bb = bytearray(b)
            bb[eocd + 10:eocd + 12] = struct.pack("<H", 0xFFFF)
            out.append(("zip end record: 65535 entries", bytes(bb)))
        return out

    # ---------------- data mutants ----------------

    def gen_data_cases(self):
        cases = collections.defaultdict(list)
        D = os.path.join(self.tree, "manifests", "data")
        imgs = os.path.join(D, "imgs")
        first = read_bytes(os.path.join(imgs, "00.png"))
        pix, mask = shape_image(0)

        def img_case(kind, seed, desc, files, skip=(), key="target.dataset", folder="imgs", names=()):
            base = self.copy_folder(os.path.join(D, folder), skip=skip)
            base.update(files)
            fs = {f"{folder}/{k}": v for k, v in base.items()}
            return self.file_case(kind, seed, desc, fs, lambda f: ["--set", f"{key}={f}/{folder}"],
                                  names=list(names) + [folder])

        # --- images ---
        seed = "manifests/fz-folder.toml"
        img_muts = []
        for cut in [0, 8, 20, 33, 40, len(first) // 2, len(first) - 12, len(first) - 1]:
            img_muts.append((f"00.png truncated to {cut} of {len(first)} bytes", {"00.png": first[:cut]}))
        for _ in range(10):
            b = bytearray(first)
            p = self.rng.randrange(8, len(b))
            b[p] = self.rng.randrange(256)
            img_muts.append((f"00.png byte {p} {first[p]:#04x} -> {b[p]:#04x}", {"00.png": bytes(b)}))
        for w, h in [(0, 16), (16, 0), (100000, 100000), (2 ** 31 - 1, 1), (1, 2 ** 31 - 1), (65535, 65535)]:
            img_muts.append((f"00.png IHDR claims {w}x{h} (valid CRC, 16x16 data)", {"00.png": png_with_ihdr(first, w=w, h=h)}))
        for depth, ctype in [(16, None), (3, None), (8, 3), (8, 7), (1, 2)]:
            img_muts.append((f"00.png IHDR bit depth {depth} colour type {ctype}",
                             {"00.png": png_with_ihdr(first, depth=depth, ctype=ctype)}))
        img_muts.append(("00.png IHDR interlace 1 on non-interlaced data", {"00.png": png_with_ihdr(first, interlace=1)}))
        img_muts += [
            ("00.png is 1x1", {"00.png": png_bytes(1, 1, lambda x, y: (9, 9, 9))}),
            ("00.png is 1x20000 (extreme aspect ratio)", {"00.png": png_bytes(1, 20000, lambda x, y: (9, 9, 9))}),
            ("00.png is 20000x1 (extreme aspect ratio)", {"00.png": png_bytes(20000, 1, lambda x, y: (9, 9, 9))}),
            ("00.png is 16-bit grey+alpha", {"00.png": png_bytes(16, 16, lambda x, y: (x * 8, 255), color_type=4, bit_depth=16)}),
            ("00.png is RGBA", {"00.png": png_bytes(16, 16, lambda x, y: (x * 8, y * 8, 0, 0), color_type=6)}),
            ("a zero-byte file z.png", {"z.png": b""}),
            ("a text file notes.txt", {"notes.txt": b"hello"}),
            ("a garbage x.jpg", {"x.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4}),
            ("a JPEG with only SOI/EOI y.JPEG", {"y.JPEG": b"\xff\xd8\xff\xd9"}),
            ("a PNG named x.PNG (upper case)", {"x.PNG": first}),
            ("a hidden .DS_Store", {".DS_Store": b"\x00\x01"}),
            ("a file with a comma: a,b.png", {"a,b.png": first}),
            ("a file named with a newline", {"a\nb.png": first}),
            ("a file named with invalid UTF-8", {"\udcff.png": first}),
            ("a link z.png to /dev/zero", {"z.png": lambda p: os.symlink("/dev/zero", p)}),
            ("a link z.png to /dev/null", {"z.png": lambda p: os.symlink("/dev/null", p)}),
            ("a FIFO z.png", {"z.png": lambda p: os.mkfifo(p)}),
            ("a dangling link z.png", {"z.png": lambda p: os.symlink("/nonexistent/q.png", p)}),
            ("a folder named d.png", {"d.png/x.txt": b"x"}),
            ("a link loop sub/loop -> ..", {"sub/loop": lambda p: os.symlink("..", p)}),
            ("a link to the folder itself: self -> .", {"self": lambda p: os.symlink(".", p)}),
            ("an empty sub-folder", {"empty/.keep": b""}),
            ("a PNG that is a valid GIF", {"g.png": b"GIF89a\x01\x00\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00;"}),
            ("a decompression bomb: 8000x8000 black PNG", {"bomb.png": None}),
        ]
        for desc, files in img_muts:
            if "bomb.png" in files:
                row = b"\x00" + b"\x00" * (8000 * 3)
                data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 2, 0, 0, 0))
                        + png_chunk(b"IDAT", zlib.compress(row * 8000, 9)) + png_chunk(b"IEND", b""))
                files = {"bomb.png": data}
            cases["data.image"].append(img_case("data.image", seed, f"data/imgs: {desc}", files,
                                                names=["imgs", "00.png", "z.png", "x.jpg", "notes.txt", "bomb.png", "png"]))
        for desc in ["the folder is empty (only labels.csv)", "the folder is missing", "the folder is a file"]:
            if "empty" in desc:
                cases["data.folder"].append(self.file_case("data.folder", seed, f"data/imgs: {desc}",
                                                           {"imgs/labels.csv": b"file,label\n"},
                                                           lambda f: ["--set", f"target.dataset={f}/imgs"], names=["imgs"]))
            elif "missing" in desc:
                cases["data.folder"].append(self.file_case("data.folder", seed, f"data/imgs: {desc}", {},
                                                           lambda f: ["--set", f"target.dataset={f}/imgs"], names=["imgs"]))
            else:
                cases["data.folder"].append(self.file_case("data.folder", seed, f"data/imgs: {desc}", {"imgs": first},
                                                           lambda f: ["--set", f"target.dataset={f}/imgs"], names=["imgs"]))
        # --- masks ---
        mfirst = read_bytes(os.path.join(D, "masks", "00.png"))
        mask_muts = [
            ("00.png mask missing", {}, ("00.png",)),
            ("00.png mask is 8x8", {"00.png": png_bytes(8, 8, lambda x, y: (1,), color_type=0)}, ()),
            ("00.png mask is 17x15", {"00.png": png_bytes(17, 15, lambda x, y: (1,), color_type=0)}, ()),
            ("00.png mask is RGB", {"00.png": png_bytes(16, 16, lambda x, y: (1, 2, 3))}, ()),
            ("00.png mask is 16-bit", {"00.png": png_bytes(16, 16, lambda x, y: (200,), color_type=0, bit_depth=16)}, ()),
            ("00.png mask values 255", {"00.png": png_bytes(16, 16, lambda x, y: (255,), color_type=0)}, ()),
            ("00.png mask truncated", {"00.png": mfirst[:30]}, ()),
            ("00.png mask empty", {"00.png": b""}, ()),
            ("00.png mask is a link to /dev/zero", {"00.png": lambda p: os.symlink("/dev/zero", p)}, ()),
            ("00.png mask IHDR 100000x100000", {"00.png": png_with_ihdr(mfirst, w=100000, h=100000)}, ()),
            ("an extra mask zz.png with no image", {"zz.png": mfirst}, ()),
        ]
        for desc, files, skip in mask_muts:
            cases["data.masks"].append(img_case("data.masks", seed, f"data/masks: {desc}", files, skip=skip,
                                                key="target.masks", folder="masks", names=["masks", "00.png"]))
        # --- eval reference / condition folders ---
        for desc, files in img_muts[::3]:
            if "bomb.png" in files:
                continue
            cases["data.reference"].append(img_case("data.reference", seed, f"eval.reference folder: {desc}", files,
                                                    key="eval.reference", names=["reference", "00.png", "z.png", "imgs"]))
            cases["data.condition"].append(img_case("data.condition", "manifests/fz-folder-anl.toml",
                                                    f"sample.condition folder: {desc}", files,
                                                    key="sample.condition", names=["condition", "00.png", "z.png", "imgs"]))
        # --- labels.csv ---
        seed = "manifests/fz-folder-labels.toml"
        good = open(os.path.join(imgs, "labels.csv")).read()
        glines = good.strip().split("\n")
        csv_muts = [
            ("empty file", ""),
            ("header only", "file,label\n"),
            ("no header", "\n".join(glines[1:]) + "\n"),
            ("wrong header", "name,cls\n" + "\n".join(glines[1:]) + "\n"),
            ("BOM + CRLF", "\ufeff" + "\r\n".join(glines) + "\r\n"),
            ("row for 00.png missing", "\n".join(glines[:1] + glines[2:]) + "\n"),
            ("00.png listed twice with two labels", good + "00.png,1,b\n"),
            ("00.png listed twice, same label", good + "00.png,0,a\n"),
            ("label 0 given two class names", good.replace("02.png,0,a", "02.png,0,z")),
            ("a row for a missing file", good + "nope.png,0,a\n"),
            ("a row with an absolute path", good + "/etc/passwd,0,a\n"),
            ("a row with ../ path", good + "../masks/00.png,0,a\n"),
            ("extra column", good.replace("00.png,0,a", "00.png,0,a,extra")),
            ("missing column", good.replace("00.png,0,a", "00.png")),
            ("blank lines", good.replace("\n", "\n\n")),
            ("trailing spaces", good.replace(",0,a", " , 0 , a ")),
            ("quoted fields", good.replace("00.png,0,a", '"00.png","0","a"')),
            ("invalid UTF-8", good.replace("00.png,0,a", "00.png,0,\udcff")),
            ("NUL byte", good.replace("00.png,0,a", "00.png,0,a\x00")),
            ("a 100000-character class name", good.replace("00.png,0,a", "00.png,0," + "c" * 100000)),
            ("labels are 0 and 999998 (sparse)", good.replace(",1,b", ",999998,b")),
        ]
        for lab in ["-1", "999999", "1000000", "18446744073709551616", "4294967296", "1.5", "x", "", "1e3", "+1", "0x1"]:
            csv_muts.append((f"label of 00.png is {lab!r}", good.replace("00.png,0,a", f"00.png,{lab},a")))
        csv_muts.append(("100000 rows", "file,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(100000))))
        for desc, data in csv_muts:
            cases["data.labels_csv"].append(img_case(
                "data.labels_csv", seed, f"data/imgs/labels.csv: {desc}",
                {"labels.csv": data.encode("utf-8", "surrogateescape")}, names=["labels.csv", "00.png", "nope.png", "imgs"]))
        for desc, files in [("labels.csv is a link to /dev/zero", {"labels.csv": lambda p: os.symlink("/dev/zero", p)}),
                            ("labels.csv is a FIFO", {"labels.csv": lambda p: os.mkfifo(p)}),
                            ("labels.csv is a folder", {"labels.csv/x.png": first})]:
            cases["data.labels_csv"].append(img_case("data.labels_csv", seed, f"data/imgs: {desc}", files, skip=("labels.csv",),
                                                     names=["labels.csv", "imgs"]))
        # --- class sub-folders ---
        seed = "manifests/fz-folder-sub.toml"
        sub = os.path.join(D, "imgs_sub")
        for desc, files, skip in [
            ("an image directly in the folder", {"top.png": first}, ()),
            ("an empty class folder c/", {"c/.keep": b""}, ()),
            ("one class only (b/ removed)", {}, tuple(f"b/{i:02d}.png" for i in range(1, 8, 2))),
            ("a class folder named with a comma", {"x,y/00.png": first}, ()),
            ("a class folder that is a link loop", {"c/loop": lambda p: os.symlink("..", p)}, ()),
            ("1000 class folders", {f"k{i:04d}/00.png": first for i in range(1000)}, ()),
        ]:
            base = self.copy_folder(sub, skip=skip)
            base.update(files)
            fs = {f"imgs_sub/{k}": v for k, v in base.items()}
            cases["data.folder"].append(self.file_case("data.folder", seed, f"data/imgs_sub: {desc}", fs,
                                                       lambda f: ["--set", f"target.dataset={f}/imgs_sub"],
                                                       names=["imgs_sub", "top.png", "c", "b", "x,y"]))
        return cases

    # ---------------- command-line arguments ----------------

    def gen_cli_cases(self):
        """`dtx model inspect` and `dtx sample` flags set to edge values (no manifest, no plan)."""
        cases = collections.defaultdict(list)
        T = self.tree
        big = ["0", "-1", "65537", "100000000", "2000000000", "4294967296", "18446744073709551615",
               "18446744073709551616", "1e308", "nan", "x", ""]

        def cli_case(name, argv_fn, desc, names):
            def make(case):
                out = os.path.join(self.rundir, case.id)
                case.manifest, case.sets, case.text = None, [], None
                case.extra_cmds = [(name, argv_fn(out))]
                case.cleanup.append(out)
            return Case("cli.args", None, desc, make, names=names, runnable=False)

        adm_cfg = os.path.join(T, "tests/fixtures/adm/full/config.toml")
        adm_pt = os.path.join(T, "tests/fixtures/adm/full/model.pt")
        for key in ["blocks", "hidden", "data_dim", "num_classes"]:
            for v in big:
                cases["cli.args"].append(cli_case(
                    "inspect", lambda o, k=key, v=v: ["model", "inspect", "--kind", "mlp", "--set", f"{k}={v}"],
                    f"dtx model inspect --kind mlp --set {key}={v}", [key, "--set"]))
        for key in ["num_res_blocks", "num_channels", "image_size", "num_heads", "num_head_channels", "num_classes"]:
            for v in big:
                cases["cli.args"].append(cli_case(
                    "inspect", lambda o, k=key, v=v: ["model", "inspect", adm_pt, "--config", adm_cfg, "--set", f"{k}={v}"],
                    f"dtx model inspect <adm model.pt> --config config.toml --set {key}={v}", [key, "--set"]))
        for key, v in [("channel_mult", ",".join(["1"] * 1000)), ("attention_resolutions", ",".join(["1"] * 1000)),
                       ("channel_mult", "0"), ("channel_mult", ""), ("attention_resolutions", "0")]:
            cases["cli.args"].append(cli_case(
                "inspect", lambda o, k=key, v=v: ["model", "inspect", adm_pt, "--config", adm_cfg, "--set", f"{k}={v}"],
                f"dtx model inspect <adm model.pt> --set {key}={short(v, 40)}", [key, "--set"]))
        for cfg in ["/dev/zero", "/dev/null", os.path.join(T, "fifo"), "/nonexistent.toml", T]:
            cases["cli.args"].append(cli_case(
                "inspect", lambda o, c=cfg: ["model", "inspect", adm_pt, "--config", c],
                f"dtx model inspect <adm model.pt> --config {cfg}", ["--config", os.path.basename(cfg) or cfg]))
        src = os.path.join(T, "manifests/models/shapes-source")
        for v in ["0", "1", "3", "1048576", "4294967296", "18446744073709551615", "-1"]:
            cases["cli.args"].append(cli_case(
                "inspect", lambda o, v=v: ["model", "inspect", src, f"--resolution={v}"],
                f"dtx model inspect shapes-source --resolution={v}", ["--resolution", "resolution"]))
        run = self.seed_runs.get("anl-unet") or self.seed_runs.get("gmm-mlp")
        if run:
            for flag, vals in [("--count", big), ("--steps", big), ("--eta", ["nan", "inf", "-1", "1e308", "x"]),
                               ("--seed", big), ("--sampler", ["x", ""]), ("--mask-rate", ["nan", "1", "-0.5", "x"]),
                               ("--condition", ["/dev/zero", "/dev/null", os.path.join(T, "fifo"), "/nonexistent.png"]),
                               ("--prompt", ["", "A" * 100000])]:
                for v in vals:
                    cases["cli.args"].append(cli_case(
                        "sample", lambda o, f=flag, v=v: ["sample", run, f"{f}={v}", "--out", o] +
                        (["--count", "2"] if f != "--count" else []) + (["--steps", "2"] if f != "--steps" else []),
                        f"dtx sample <run> {flag}={short(v, 40)}", [flag, flag.strip("-").replace("-", "_")]))
            for out in ["/dev/null", "/proc/x", os.path.join(T, "fifo")]:
                cases["cli.args"].append(cli_case(
                    "sample", lambda o, out=out: ["sample", run, "--count", "2", "--steps", "2", "--out", out],
                    f"dtx sample <run> --out {out}", ["--out", out]))
        return cases

    # ---------------- running cases ----------------

    def classify(self, res, case, cmd):
        """[(category, signature)] for one dtx result."""
        out = []
        se = res["stderr"]
        rc = res["rc"]
        if res["timed_out"]:
            out.append(("timeout", f"timeout:{cmd}:{case.kind}:{case.value_label or ''}"))
        elif rc is not None and rc < 0:
            sig = -rc
            out.append(("signal", f"signal{sig}:{normalise(first_error_line(se))}"))
        elif rc == 101:
            m = re.search(r"panicked at ([^:\n]+:\d+)", se)
            out.append(("panic", f"panic:{m.group(1) if m else normalise(first_error_line(se))}"))
        elif rc not in (0, 1, 2):
            out.append(("exit-code", f"rc{rc}:{normalise(first_error_line(se))}"))
        for pat in FINDING_PATTERNS:
            if pat in se and not res["timed_out"] and rc not in (101,) and not (rc is not None and rc < 0):
                out.append(("stderr-pattern", f"pattern:{pat}:{cmd}:{normalise(first_error_line(se))}"))
                break
        if res.get("stderr_bytes", 0) > 1_000_000:
            out.append(("huge-message", f"huge:{cmd}:{normalise(first_error_line(se))}"))
        if rc == 1 and not res["timed_out"]:
            names = [n for n in case.names if n] + [os.path.basename(case.manifest or "")]
            names = [n for n in names if len(n) >= 2]
            for block in re.split(r"\n(?=error)", se):
                b = block.strip()
                if not b or re.match(r"error: \d+ problems? in ", b):
                    continue
                if not any(n in b for n in names):
                    out.append(("unclear-candidate", f"unclear:{cmd}:{normalise(b.splitlines()[0])}"))
                    break
        return out

    def run_case(self, case, with_run=False):
        case.make(case)
        if case.manifest is not None:
            case.results["plan"] = self.exec(["plan", case.manifest] + case.sets, self.args.plan_timeout)
        for name, argv in case.extra_cmds:
            case.results[name] = self.exec(argv, self.args.plan_timeout)

    def shrink_sets(self, case):
        """Overrides that make a run take seconds (not touching the mutated key)."""
        text = case.text if isinstance(case.text, str) else None
        try:
            d = tomllib.loads(text if text is not None else open(os.path.join(self.tree, case.manifest)).read())
        except Exception:
            d = {}
        touched = case.touched or ""
        already = {s.split("=")[0] for s in case.sets[1::2]}
        sets = []

        def add(k, v):
            if k == touched or touched.startswith(k + ".") or k in already or k.startswith(touched + ".") and touched:
                return
            sets.extend(["--set", f"{k}={v}"])
        if isinstance(d.get("train"), dict):
            add("train.steps", 1)
        if isinstance(d.get("sample"), dict):
            add("sample.count", 2)
            add("sample.batch", 2)
            add("sample.steps", 2)
        for i, p in enumerate(d.get("plugin", []) if isinstance(d.get("plugin"), list) else []):
            if not isinstance(p, dict):
                continue
            lib = str(p.get("library", ""))
            if "tgdp" in lib:
                for k, v in [("classifier_steps", 2), ("time_classifier_steps", 2), ("guidance_steps", 2),
                             ("batch", 4), ("source_samples", 8)]:
                    add(f"plugin[{i}].config.{k}", v)
            if "denoiser_guidance" in lib:
                for k, v in [("steps", 3), ("pool", 8), ("batch", 4), ("validation", 4)]:
                    add(f"plugin[{i}].config.{k}", v)
        out = os.path.join(self.rundir, case.id)
        if touched not in ("run.output_dir", "run.name", "run"):
            sets.extend(["--set", f"run.output_dir={out}"])
        return sets

    def is_run_worthy(self, case):
        if not case.runnable or case.results.get("plan", {}).get("rc") != 0:
            return False
        if case.value_label in ("2^64", "i64max", "2^32", "1e308", "65537", "bigarr", "longstr") and case.touched and \
                WORK_KEY_RE.search(case.touched.split(".")[-1]):
            return False
        if case.touched and case.touched.split(".")[-1] in ("seed", "split_seed") and case.value_label != "0":
            return True
        return True

    def do_run(self, case):
        self.cleanup(case)
        case.make(case)  # re-create (the files were cleaned after plan)
        sets = case.sets + self.shrink_sets(case)
        p = self.exec(["plan", case.manifest] + sets, self.args.plan_timeout)
        case.results["plan+shrink"] = p
        if p["rc"] != 0:
            return False
        case.results["run"] = self.exec(["run", "--quiet", case.manifest] + sets, self.args.run_timeout)
        return True

    def cleanup(self, case, keep=False):
        if keep:
            return
        for p in case.cleanup:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
        case.cleanup = []
        rd = os.path.join(self.rundir, case.id)
        if os.path.exists(rd):
            shutil.rmtree(rd, ignore_errors=True)

    # ---------------- main loop ----------------

    def select(self, all_cases, n_total):
        """A stratified random sample of about n_total cases, in a fixed order."""
        kinds = sorted(all_cases)
        for k in kinds:
            self.rng.shuffle(all_cases[k])
        w = self.weights(kinds)
        tot = sum(w.values())
        share = {k: max(3, round(n_total * v / tot)) for k, v in w.items()}
        chosen = []
        for k in kinds:
            chosen += all_cases[k][: share[k]]
        self.rng.shuffle(chosen)
        return chosen

    @staticmethod
    def weights(kinds):
        w = {"manifest.value": 0.22, "manifest.inline": 0.06, "manifest.plugin_config": 0.12,
             "manifest.delete_line": 0.04, "manifest.dup_line": 0.03, "manifest.dup_section": 0.02,
             "manifest.truncate": 0.03, "manifest.byteflip": 0.04, "manifest.set_override": 0.04,
             "model.diffusers_config": 0.08, "model.safetensors": 0.08, "model.adm_pt": 0.04, "model.clip": 0.04,
             "model.dtx_run": 0.04, "data.image": 0.03, "data.labels_csv": 0.02, "data.masks": 0.01,
             "data.folder": 0.01, "data.reference": 0.01, "data.condition": 0.01, "cli.args": 0.04}
        return {k: w.get(k, 0.02) for k in kinds}

    def main(self):
        os.makedirs(self.out, exist_ok=True)
        print(f"setting up {self.tree}", file=sys.stderr)
        self.setup()
        all_cases = collections.defaultdict(list)
        for gen in (self.gen_manifest_cases, self.gen_model_cases, self.gen_data_cases, self.gen_cli_cases):
            for k, v in gen().items():
                all_cases[k] += v
        total_avail = {k: len(v) for k, v in all_cases.items()}
        print("available mutants: " + ", ".join(f"{k} {n}" for k, n in sorted(total_avail.items())), file=sys.stderr)
        n_plan = self.args.max_plan or (5000 if self.args.full else 200)
        n_run = self.args.max_run if self.args.max_run is not None else (100 if self.args.full else 8)
        budget = self.args.budget or (2700 if self.args.full else 900)
        chosen = self.select(all_cases, n_plan)
        for i, c in enumerate(chosen):
            c.id = f"{i:05d}"
        self.results_f = open(os.path.join(self.out, "results.jsonl"), "w")
        plan_deadline = self.start + budget * (0.55 if n_run else 0.95)
        done = []
        timeouts = collections.Counter()
        self.skipped = collections.Counter()
        for i, c in enumerate(chosen):
            if time.time() > plan_deadline:
                print(f"plan budget spent after {i} cases", file=sys.stderr)
                break
            tkey = (c.value_label, (c.touched or "").split(".")[-1]) if c.value_label else None
            if tkey and timeouts[tkey] >= 2:
                self.skipped[f"{c.kind} (value {c.value_label} for `{tkey[1]}` timed out twice)"] += 1
                continue
            try:
                self.run_case(c)
            except Exception as e:  # a generator bug must not stop the pass
                print(f"case {c.id} ({c.kind}: {c.desc}) could not be built: {e!r}", file=sys.stderr)
                self.cleanup(c)
                continue
            cats = self.case_findings(c)
            if tkey and any(r["timed_out"] for r in c.results.values()):
                timeouts[tkey] += 1
            self.cleanup(c, keep=bool([x for x in cats if x[0] != "unclear-candidate"]))
            done.append(c)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1} plan cases, {time.time() - self.start:.0f} s", file=sys.stderr)
        # runs: stratified over kinds among plan-accepted mutants
        pool = collections.defaultdict(list)
        for c in done:
            if self.is_run_worthy(c):
                pool[c.kind].append(c)
        for k in pool:  # mutants that `model inspect` refused although `plan` accepted them go first
            pool[k].sort(key=lambda c: 0 if any(c.results.get(x, {}).get("rc") == 1 for x in ("inspect",)) else 1)
        order = []
        kinds = sorted(pool)
        while any(pool[k] for k in kinds):
            for k in kinds:
                if pool[k]:
                    order.append(pool[k].pop(0))
        runs = 0
        for c in order:
            if runs >= n_run or time.time() > self.start + budget:
                break
            try:
                ok = self.do_run(c)
            except Exception as e:
                print(f"run of case {c.id} failed to build: {e!r}", file=sys.stderr)
                self.cleanup(c)
                continue
            if ok:
                runs += 1
                if runs % 10 == 0:
                    print(f"  {runs} run cases, {time.time() - self.start:.0f} s", file=sys.stderr)
            cats = self.case_findings(c)
            self.cleanup(c, keep=bool([x for x in cats if x[0] != "unclear-candidate"]))
        for c in done:
            self.results_f.write(json.dumps(self.case_record(c)) + "\n")
        self.results_f.close()
        self.minimise(done)
        self.report(done, total_avail)
        print(f"done in {time.time() - self.start:.0f} s: {self.n_exec['plan']} plan, {self.n_exec['run']} run, "
              f"{self.n_exec['model']} inspect, {self.n_exec['sample']} sample; see {self.out}/findings.md",
              file=sys.stderr)

    def case_findings(self, c):
        cats = []
        for cmd, res in c.results.items():
            for cat, sig in self.classify(res, c, cmd):
                cats.append((cat, sig, cmd))
        if "run" in c.results and c.results["run"]["rc"] != 0 and c.results["plan+shrink"]["rc"] == 0 \
                and not c.results["run"]["timed_out"] and c.results["run"]["rc"] not in (101,) and c.results["run"]["rc"] > 0:
            cats.append(("plan-ok-run-fail", "planok:" + normalise(first_error_line(c.results["run"]["stderr"])), "run"))
        if "inspect" in c.results and "plan" in c.results and c.results["plan"]["rc"] == 0 \
                and c.results["inspect"]["rc"] == 1:
            cats.append(("plan-ok-inspect-fail", "planok-inspect:" + normalise(first_error_line(c.results["inspect"]["stderr"])),
                         "inspect"))
        setattr_findings(c, cats)
        return cats

    def case_record(self, c):
        return {"id": c.id, "kind": c.kind, "seed": c.seed, "desc": short(c.desc, 300), "touched": c.touched,
                "value": c.value_label, "manifest": c.manifest, "sets": [short(s, 200) for s in c.sets[:12]],
                "results": {k: {"rc": v["rc"], "timed_out": v["timed_out"], "wall": v["wall"],
                                "argv": [short(a, 200) for a in v["argv"][:16]],
                                "stderr_tail": tail_lines(v["stderr"], 8, 300)} for k, v in c.results.items()},
                "findings": [list(x) for x in FINDINGS.get(id(c), [])]}

    # ---------------- minimisation ----------------

    def minimise(self, done):
        """Greedy line removal of manifest-only plan findings (same signature kept)."""
        self.minimal = {}
        seen = set()
        for c in done:
            for cat, sig, cmd in FINDINGS.get(id(c), []):
                if cat in ("unclear-candidate", "plan-ok-run-fail") or cmd != "plan" or sig in seen:
                    continue
                if not c.kind.startswith("manifest.") or not isinstance(c.text, str):
                    continue
                seen.add(sig)
                lines = c.text.split("\n")
                d = os.path.dirname(os.path.join(self.tree, c.seed))
                path = os.path.join(d, f"fz_{c.id}_min.toml")
                tries = 0
                i = len(lines) - 1
                while i >= 0 and tries < 120:
                    cand = lines[:i] + lines[i + 1:]
                    write(path, "\n".join(cand))
                    r = self.exec(["plan", rel(path, self.tree)] + c.sets, self.args.plan_timeout)
                    tries += 1
                    if any(s == sig for _, s in self.classify(r, c, "plan")):
                        lines = cand
                    i -= 1
                write(path, "\n".join(lines))
                self.minimal[sig] = (rel(path, self.tree), "\n".join(lines))

    # ---------------- report ----------------

    def report(self, done, total_avail):
        L = []
        L.append("# dtx input fuzzing: findings\n")
        L.append(f"- dtx: `{self.dtx}`; plugins: `DTX_PLUGIN_PATH={self.env['DTX_PLUGIN_PATH']}`")
        L.append(f"- mode: {'full' if self.args.full else 'quick'}, RNG seed {self.args.seed}, "
                 f"wall time {time.time() - self.start:.0f} s, address-space limit {self.args.mem_limit_gb} GiB per process")
        L.append(f"- tree (seeds and kept mutants): `{self.tree}`; every case: `{self.out}/results.jsonl`")
        L.append(f"- commands run: {self.n_exec['plan']} `plan` (incl. minimisation and plan-with-shrink), "
                 f"{self.n_exec['run']} `run`, {self.n_exec['model']} `model inspect`, {self.n_exec['sample']} `sample`\n")
        L.append("## Cases per mutation kind\n")
        L.append("| kind | available | plan cases | plan rc=0 | run cases | run rc=0 | inspect | sample |")
        L.append("|---|---|---|---|---|---|---|---|")
        by_kind = collections.defaultdict(list)
        for c in done:
            by_kind[c.kind].append(c)
        for k in sorted(total_avail):
            cs = by_kind.get(k, [])
            pr = [c for c in cs if "plan" in c.results]
            rr = [c for c in cs if "run" in c.results]
            L.append(f"| {k} | {total_avail[k]} | {len(pr)} | {sum(c.results['plan']['rc'] == 0 for c in pr)} | "
                     f"{len(rr)} | {sum(c.results['run']['rc'] == 0 for c in rr)} | "
                     f"{sum('inspect' in c.results for c in cs)} | {sum('sample' in c.results for c in cs)} |")
        if getattr(self, "skipped", None):
            L.append("\nSkipped after repeated timeouts: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        L.append("\n## Exit codes per command\n")
        codes = collections.defaultdict(collections.Counter)
        for c in done:
            for cmd, r in c.results.items():
                codes[cmd]["timeout" if r["timed_out"] else str(r["rc"])] += 1
        for cmd in sorted(codes):
            L.append(f"- `{cmd}`: " + ", ".join(f"rc {k}: {v}" for k, v in sorted(codes[cmd].items())))
        # group findings
        groups = collections.OrderedDict()
        for c in done:
            for cat, sig, cmd in FINDINGS.get(id(c), []):
                groups.setdefault((cat, sig), []).append((c, cmd))
        order = ["panic", "signal", "exit-code", "stderr-pattern", "timeout", "huge-message", "plan-ok-run-fail",
                 "plan-ok-inspect-fail"]
        real = [(k, v) for k, v in groups.items() if k[0] in order]
        real.sort(key=lambda kv: (order.index(kv[0][0]), kv[0][1]))
        L.append("\n## Findings by likely cause\n")
        L.append("Signatures grouped by category, mutation kind and the input they went through "
                 "(the `--set` key naming the mutated file or folder, else the manifest key mutated).\n")
        L.append("| category | kind | input | signatures | cases | example |")
        L.append("|---|---|---|---|---|---|")
        causes = collections.OrderedDict()
        for (cat, sig), items in real:
            for c, cmd in items:
                via = next((x.split("=")[0] for x in c.sets[1::2] if x.split("=")[0] != "source.init"), None) \
                    or (c.touched.split("[")[0] if c.touched else "-")
                key = (cat, c.kind, via)
                e = causes.setdefault(key, [set(), 0, c])
                e[0].add(sig)
                e[1] += 1
        for (cat, kind, via), (sigs, n, c) in causes.items():
            L.append(f"| {cat} | {kind} | `{short(via, 40)}` | {len(sigs)} | {n} | {short(c.desc, 90).replace('|', '/')} |")
        L.append(f"\n## Findings ({len(real)} distinct signatures)\n")
        if not real:
            L.append("None: no panic, signal, timeout, allocation failure or plan-ok/run-fail.\n")
        for n, ((cat, sig), items) in enumerate(real, 1):
            items.sort(key=lambda x: (len(x[0].text) if isinstance(x[0].text, (str, bytes)) else 10 ** 9, x[0].id))
            c, cmd = items[0]
            r = c.results[cmd]
            L.append(f"### {n}. {cat}: `{short(sig, 160)}`\n")
            L.append(f"- cases: {len(items)} ({', '.join(sorted({x[0].kind for x in items}))}); "
                     f"ids {', '.join(sorted({x[0].id for x in items})[:12])}")
            L.append(f"- seed: `{c.seed}`; mutation: {short(c.desc, 400)}")
            L.append(f"- command (cwd `{self.tree}`): `{' '.join(short(a, 120) for a in ['dtx'] + r['argv'])}`")
            L.append(f"- exit: {'timeout after ' + str(r['wall']) + ' s' if r['timed_out'] else r['rc']}")
            if sig in getattr(self, "minimal", {}):
                p, t = self.minimal[sig]
                L.append(f"- minimised manifest `{p}`:\n\n```toml\n{short(t, 1500)}\n```")
            L.append(f"\n```text\n{tail_lines(r['stderr'], 20, 300)}\n```\n")
            others = sorted({short(x[0].desc, 120) for x in items[1:]})[:5]
            if others:
                L.append("other mutations with this signature: " + "; ".join(others) + "\n")
        # unclear candidates
        unc = [(k, v) for k, v in groups.items() if k[0] == "unclear-candidate"]
        unc.sort(key=lambda kv: -len(kv[1]))
        L.append(f"\n## Messages that name neither the file, the key nor the section (candidates, {len(unc)} distinct)\n")
        L.append("Heuristic: a failing case whose stderr contains none of the names tied to the mutation "
                 "(manifest file, key, section, mutated file). Review by reading them.\n")
        for (cat, sig), items in unc[:60]:
            c, cmd = items[0]
            L.append(f"- **{len(items)}×** `{cmd}` — {short(c.desc, 160)} (`{c.seed}`, case {c.id}):")
            L.append(f"\n  ```text\n  " + tail_lines(c.results[cmd]["stderr"], 8, 240).replace("\n", "\n  ") + "\n  ```")
        open(os.path.join(self.out, "findings.md"), "w").write("\n".join(L) + "\n")


FINDINGS = {}


def setattr_findings(c, cats):
    FINDINGS[id(c)] = FINDINGS.get(id(c), []) + [x for x in cats if x not in FINDINGS.get(id(c), [])]


def main():
    # the repository: the first folder at or above this script's (or the current one) with manifests/ and tests/
    default_src = os.getcwd()
    for start in (os.path.dirname(os.path.abspath(__file__)), os.getcwd()):
        d = start
        while d != os.path.dirname(d):
            if os.path.isdir(os.path.join(d, "manifests")) and os.path.isdir(os.path.join(d, "tests", "manifests")):
                default_src = d
                break
            d = os.path.dirname(d)
        else:
            continue
        break
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dtx", help="the dtx binary (release build); plugins next to it unless DTX_PLUGIN_PATH is set")
    ap.add_argument("out", help="output folder (its tree/ and runs/ are recreated)")
    ap.add_argument("--full", action="store_true", help="thousands of plan cases and ~90 runs (default: quick, ~200 plan cases)")
    ap.add_argument("--seed", type=int, default=20261206, help="RNG seed (fixed, for a reproducible pass)")
    ap.add_argument("--src", default=default_src, help="repository root with manifests/ and tests/")
    ap.add_argument("--max-plan", type=int, default=None)
    ap.add_argument("--max-run", type=int, default=None)
    ap.add_argument("--budget", type=float, default=None, help="wall-time budget in seconds")
    ap.add_argument("--plan-timeout", type=float, default=60)
    ap.add_argument("--run-timeout", type=float, default=120)
    ap.add_argument("--mem-limit-gb", type=float, default=3.0)
    args = ap.parse_args()
    Fuzzer(args).main()


if __name__ == "__main__":
    main()
