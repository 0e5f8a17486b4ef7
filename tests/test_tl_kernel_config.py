"""TL files carry their tiling (issue 13, scope 2): every reader takes it from --kernel-config,
then `<file>.kernel_config.ini`, then bitconv's `bitconv.tl.kernel_config` key, and refuses a TL
file with none of them instead of decoding it with a guessed tiling.

The "bitnet.cpp" files here are written as bitnet.cpp's converter writes them after its codegen
chose another tiling than bitconv would for some shapes (BM 128 / BK 192 for the 256 x 256 TL2
weights, ...): the same codes laid out by that tiling (tl1/tl2.pack with an explicit Tiling),
the metadata without bitconv's key, no file beside it, and the tiling only in a separate
kernel_config.ini (bitnet.cpp's include/kernel_config.ini).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.containers.gguf_reader import kv_records, read_gguf, tensor_bytes
from bitconv.containers.gguf_writer import GGUFWriter, TensorInfo
from bitconv.containers.kernel_config import KernelConfigError, file_tilings
from bitconv.errors import InputError
from bitconv.formats import tiling, tl1, tl2
from bitconv.formats.registry import get_codec
from bitconv.formats.tiling import Tiling
from bitconv.formats.tl_common import KV_KEY, SIDECAR_SUFFIX
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.stages.pack import pack
from bitconv.types import KV, TernaryTensor
from tests.support.cli import cli

NAME = "Llama3-8B-1.58-100B-tokens"  # TL shapes (out, in): (256,256) (128,256) (512,256) (256,512)
# a tiling other than tiling.choose's for two shapes; valid for bitnet.cpp's codegen asserts
OTHER = {"tl1": {(256, 256): (128, 64, 64), (256, 512): (64, 256, 32)},
         "tl2": {(256, 256): (128, 192, 32), (256, 512): (256, 240, 32)}}
TOKENS = "3,17,250,9"


def other(fmt):
    return {s: Tiling(fmt, *s, *p) for s, p in OTHER[fmt].items()}


def write_like_bitnet_cpp(own: Path, out: Path, tiles: dict, key: str | None = None) -> Path:
    """`own` (a bitconv TL file) rewritten with `tiles` where given (bitconv's choice elsewhere)
    and metadata key `key` instead of bitconv's (none: bitnet.cpp's file)."""
    gf, w = read_gguf(own), load_gguf(own)
    codec = get_codec(w.format)
    kvs = [kv for kv in kv_records(gf) if kv.key != KV_KEY]
    if key is not None:
        at = next(i for i, kv in enumerate(kvs) if kv.key.startswith("tokenizer."))
        kvs.insert(at, KV(KV_KEY, GGUFValueType.STRING, key))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        gw = GGUFWriter(f, kvs, [TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes)
                                 for t in gf.tensors], alignment=gf.alignment)
        for t in gf.tensors:
            if t.ggml_type == codec.spec.ggml_type:
                tt = w.tensors[t.name]
                gw.write((tl1 if w.format == "tl1" else tl2).pack(tt.codes, tt.multiplier, tiles.get(tuple(t.shape))))
            else:
                gw.write(tensor_bytes(gf, t))
            gw.end_tensor()
        gw.close()
    return out


@pytest.fixture(scope="module", params=["tl2", "tl1"])
def files(request, fixtures_root, packed, tmp_path_factory):
    """own: bitconv's file (+ sidecar + key); bnc: bitnet.cpp's, with its ini elsewhere."""
    fmt, root = request.param, tmp_path_factory.mktemp(request.param)
    src = fixtures_root / NAME
    own = packed(NAME, fmt)
    bnc = write_like_bitnet_cpp(own, root / "bnc" / f"m-{fmt}.gguf", other(fmt))
    ini = root / "include" / "kernel_config.ini"
    ini.parent.mkdir()
    tl = get_codec(fmt).spec.ggml_type
    shapes = [t.shape for t in read_gguf(own).tensors if t.ggml_type == tl]
    ini.write_bytes(tiling.kernel_config(fmt, shapes, other(fmt)))
    return {"fmt": fmt, "src": src, "own": own, "bnc": bnc, "ini": ini,
            "ref": load_checkpoint_weights(src, format=fmt)}


def summary(text, key):
    """The value of one summary line of `inspect`'s text output."""
    line = next(x for x in text.splitlines() if x.startswith(key + "  "))
    return line[len(key):].strip()


def ternary_names(w):
    return [n for n in w.order if isinstance(w.tensors[n], TernaryTensor)]


def same_codes(w, ref):
    return all(np.array_equal(w.tensors[n].codes, ref.tensors[n].codes)
               and w.tensors[n].multiplier == ref.tensors[n].multiplier for n in ternary_names(ref))


# --- the file is what the issue describes ---

def test_the_bitnet_cpp_file_holds_another_layout_and_no_tiling(files):
    fmt, own, bnc = files["fmt"], files["own"], files["bnc"]
    a, b = read_gguf(own), read_gguf(bnc)
    assert KV_KEY in a.kvs and KV_KEY not in b.kvs
    assert not bnc.with_name(bnc.name + SIDECAR_SUFFIX).exists()
    qa, qb = (next(t for t in f.tensors if t.name == "blk.0.attn_q.weight") for f in (a, b))
    assert qa.shape == (256, 256)
    assert tensor_bytes(a, qa).tobytes() != tensor_bytes(b, qb).tobytes()
    # decoded with bitconv's own tiling (the old behaviour) it is other weights, silently
    codec = tl1 if fmt == "tl1" else tl2
    guessed, _ = codec.unpack(tensor_bytes(b, qb), qb.shape)
    assert not np.array_equal(guessed, files["ref"].tensors[qb.name].codes)


# --- with its ini: every command reads the source's codes ---

def test_library_reads_the_source_codes_with_the_ini(files):
    assert same_codes(load_gguf(files["bnc"], kernel_config=files["ini"]), files["ref"])


def test_inspect_names_the_kernel_config_and_tiling(files):
    r = cli("inspect", files["bnc"], "--kernel-config", files["ini"])
    assert r.exit_code == 0, r.stderr
    assert summary(r.stdout, "kernel config") == f"--kernel-config {files['ini']}"
    bm, bk, b = OTHER[files["fmt"]][(256, 256)]
    assert f"(256, 256): BM {bm}, BK {bk}, bm {b}" in summary(r.stdout, "tiling")


def test_verify_passes_with_the_ini(files):
    r = cli("verify", files["bnc"], "--source", files["src"], "--kernel-config", files["ini"],
            "--no-drift", "--tokens", "4")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout


def test_logits_equal_the_sources_with_the_ini(files, tmp_path):
    r = cli("logits", files["bnc"], "--tokens", TOKENS, "-o", tmp_path / "b.npy", "--kernel-config",
            files["ini"])
    assert r.exit_code == 0, r.stderr
    assert cli("logits", files["src"], "--tokens", TOKENS, "-o", tmp_path / "s.npy").exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "s.npy"))


def test_run_generates_what_the_source_does_with_the_ini(files):
    r = cli("run", files["bnc"], "-p", "hello", "-n", "4", "--kernel-config", files["ini"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == cli("run", files["src"], "-p", "hello", "-n", "4").stdout


def test_repack_to_tq2_0_gives_packs_file_and_verifies(files, tmp_path, packed):
    out = tmp_path / "m-tq2_0.gguf"
    r = cli("repack", files["bnc"], "--format", "tq2_0", "-o", out, "--kernel-config", files["ini"])
    assert r.exit_code == 0, r.stderr
    want = packed(NAME, "tq2_0")
    assert out.read_bytes() == want.read_bytes()  # the very file pack writes: the source's codes
    assert same_codes(load_gguf(out), load_checkpoint_weights(files["src"], format="tq2_0"))
    r = cli("verify", out, "--source", files["src"], "--no-drift", "--tokens", "4")
    assert r.exit_code == 0, r.stdout + r.stderr


def test_repack_to_tl_writes_bitconvs_tiling_and_key(files, tmp_path):
    fmt, own = files["fmt"], files["own"]
    out = tmp_path / f"again-{fmt}.gguf"
    r = cli("repack", files["bnc"], "--format", fmt, "-o", out, "--kernel-config", files["ini"])
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes() == own.read_bytes()  # pack's tiling and key, as pack writes them
    side = out.with_name(out.name + SIDECAR_SUFFIX)
    assert side.read_bytes() == own.with_name(own.name + SIDECAR_SUFFIX).read_bytes()


# --- without it: refused by each command, exit 1, one line, nothing decoded or written ---

@pytest.fixture
def spy(monkeypatch):
    """Counts TL decodes (the real codec runs; the count proves none happened)."""
    calls = []
    for codec in (tl1, tl2):
        real = codec.unpack
        monkeypatch.setattr(codec, "unpack", lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    return calls


def refusal(path: Path, fmt: str) -> str:
    return (f"Error: {path}: {fmt.upper()} tensors are laid out by a kernel configuration that the GGUF does not hold "
            "(bitnet.cpp keeps it in include/kernel_config.ini): pass --kernel-config PATH, or "
            f"put it beside the file as {path.name}{SIDECAR_SUFFIX}\n")


@pytest.mark.parametrize("command", ["inspect", "verify", "logits", "run", "repack"])
def test_without_the_ini_every_command_refuses(command, files, spy, tmp_path):
    bnc = files["bnc"]
    args = {"inspect": [], "verify": ["--source", files["src"]],
            "logits": ["--tokens", TOKENS, "-o", tmp_path / "x.npy"],
            "run": ["-p", "hello", "-n", "2"],
            "repack": ["--format", "tq2_0", "-o", tmp_path / "x.gguf"]}[command]
    r = cli(command, bnc, *args)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", refusal(bnc, files["fmt"]))
    assert spy == [] and list(tmp_path.iterdir()) == []


def test_library_refuses_without_the_ini(files):
    with pytest.raises(InputError, match="does not hold"):
        load_gguf(files["bnc"])


# --- bitconv's own files describe themselves; the order of the sources ---

def test_own_file_without_sidecar_reads_through_its_key(files, tmp_path):
    own = Path(shutil.copy(files["own"], tmp_path / files["own"].name))
    assert not own.with_name(own.name + SIDECAR_SUFFIX).exists()
    assert same_codes(load_gguf(own), files["ref"])
    r = cli("inspect", own)
    assert r.exit_code == 0 and summary(r.stdout, "kernel config") == f"metadata key {KV_KEY}"
    r = cli("verify", own, "--source", files["src"], "--no-drift", "--tokens", "4")
    assert r.exit_code == 0, r.stdout + r.stderr


def test_kernel_config_then_sidecar_then_key(files, tmp_path):
    fmt, ref = files["fmt"], files["ref"]
    shapes = [t.shape for t in read_gguf(files["own"]).tensors if t.name in ternary_names(ref)]
    wrong_text = tiling.kernel_config(fmt, shapes).decode()  # bitconv's tiling: not this file's
    right_text = files["ini"].read_text()
    # the key says a wrong tiling: used when nothing else is there, so the codes come out wrong
    f = write_like_bitnet_cpp(files["own"], tmp_path / "k.gguf", other(fmt), key=wrong_text)
    assert not same_codes(load_gguf(f), ref)
    # a sidecar beats the key ...
    side = f.with_name(f.name + SIDECAR_SUFFIX)
    side.write_text(right_text)
    assert same_codes(load_gguf(f), ref)
    # ... and --kernel-config beats both
    side.write_text(wrong_text)
    assert not same_codes(load_gguf(f), ref)
    assert same_codes(load_gguf(f, kernel_config=files["ini"]), ref)
    r = cli("verify", f, "--source", files["src"], "--no-drift", "--tokens", "4", "--kernel-config",
            files["ini"])
    assert r.exit_code == 0, r.stdout + r.stderr
    # the right key, no sidecar: read through the key
    g = write_like_bitnet_cpp(files["own"], tmp_path / "g.gguf", other(fmt), key=right_text)
    assert same_codes(load_gguf(g), ref)


def test_own_file_with_another_kernel_config_is_read_with_it(files, tmp_path):
    # --kernel-config overrides the sidecar and key of bitconv's own file too: this ini is not
    # the file's, so it decodes to other codes (tensors FAIL) but never to an error-free guess
    r = cli("verify", files["own"], "--source", files["src"], "--no-drift", "--tokens", "2",
            "--kernel-config", files["ini"])
    assert r.exit_code == 3 and "FAIL" in r.stdout


# --- a kernel config that cannot be this file's ---

@pytest.mark.parametrize("text, message", [
    ("[Kernels_0]\nm = 128\nk = 256\nbm = 128\nbk = 96\nbmm = 32\n",
     "has no section with m = 256, k = 256, the shape of blk.0.attn_q.weight"),
    ("[Kernels_0]\nm = 256\nk = 256\nbm = 96\nbk = 96\nbmm = 32\n",
     "gives blk.0.attn_q.weight (256, 256) BM = 96, BK = 96, bm = 32, which"),
    ("m = 256\n", "not a kernel_config.ini (File contains no section headers."),
    ("[Kernels_0]\nm = 256\nk = 256\nbm = x\n", "section [Kernels_0] needs integer keys m, k, bm, bk, bmm"),
    ("[Kernels_0]\nm = 256\nk = 256\nbm = 0\nbk = 0\nbmm = 32\n",
     "section [Kernels_0] has m = 256, k = 256, bm = 0, bk = 0, bmm = 32; each must be a positive"),
    ("[K]\nm = 256\nk = 256\nbm = 256\nbk = 96\nbmm = 32\n[K]\nm = 1\n",
     "not a kernel_config.ini (While reading from '<string>' [line  7]: section 'K' already exists)"),
])
def test_bad_kernel_config_is_one_line(text, message, files, tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    r = cli("inspect", files["bnc"], "--kernel-config", ini)
    assert r.exit_code == 1 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert message in r.stderr and str(ini) in r.stderr


def test_missing_kernel_config_file_is_one_line(files, tmp_path):
    r = cli("logits", files["bnc"], "--tokens", TOKENS, "-o", tmp_path / "x.npy", "--kernel-config",
            tmp_path / "nope.ini")
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1 and "nope.ini" in r.stderr
    assert not (tmp_path / "x.npy").exists()
    r = cli("inspect", files["bnc"], "--kernel-config", tmp_path)
    assert (r.exit_code, r.stderr) == (1, f"Error: {tmp_path}: is a directory\n")


# --- the encoder takes an explicit tiling ---

@pytest.mark.parametrize("fmt", ["tl1", "tl2"])
def test_encode_with_an_explicit_tiling_is_pack_with_it(fmt):
    module = tl1 if fmt == "tl1" else tl2
    codes = np.random.default_rng(1).integers(-1, 2, (256, 512)).astype(np.int8)
    t = other(fmt)[(256, 512)]
    streamed = b"".join(c.tobytes() for c in module.CODEC.encode(0.5, [codes[:64], codes[64:]], t))
    assert streamed == module.pack(codes, 0.5, t).tobytes()
    assert streamed != module.pack(codes, 0.5).tobytes()
    got, m = module.CODEC.decode([np.frombuffer(streamed, np.uint8)], codes.shape, t)
    assert np.array_equal(got, codes) and m == np.float32(0.5)


# --- any text as a kernel config: a tiling or one line, nothing else ---

NOWHERE = Path(__file__).parent / "no-such-dir"  # so no sidecar: the key is read
_INT = st.one_of(st.integers(-3, 600), st.sampled_from([32, 64, 96, 128, 192, 256, 10**30]))


@settings(max_examples=300, deadline=None)
@given(sections=st.lists(st.tuples(_INT, _INT, _INT, _INT, _INT), max_size=4),
       junk=st.text(max_size=40), fmt=st.sampled_from(["tl1", "tl2"]))
def test_any_kernel_config_is_a_tiling_or_one_line(sections, junk, fmt):
    text = "".join(f"[S{i}]\nm = {m}\nk = {k}\nbm = {a}\nbk = {b}\nbmm = {c}\n"
                   for i, (m, k, a, b, c) in enumerate(sections))
    for t in (text, text + junk, junk):
        kvs = {KV_KEY: t}
        try:
            got = file_tilings(NOWHERE / "m.gguf", kvs, fmt, [("w", (256, 512))])
        except KernelConfigError as e:
            assert "\n" not in str(e)
        else:
            t0 = got.by_shape[(256, 512)]
            assert tiling.problem(t0) is None and (t0.M, t0.K) == (256, 512)


# --- data no tiling writes: one line naming the tensor ---

def test_corrupt_tl2_padding_is_one_line_naming_the_tensor(fixtures_root, tmp_path):
    own = pack(fixtures_root / NAME, format="tl2", out=tmp_path / "m.gguf").path
    q = next(t for t in read_gguf(own).tensors if t.name == "blk.1.attn_q.weight")
    # (256, 256) with BK 96: 14,336 payload bytes, zeros up to 16,384, then the tail
    with open(own, "r+b") as f:
        f.seek(q.offset + 15000)
        f.write(b"\x07")
    line = ("blk.1.attn_q.weight: tl2 data has byte 0x07 at offset 15000 in its zero padding "
            "(bytes 14336..16383): not what any tiling writes")
    r = cli("logits", own, "--tokens", TOKENS, "-o", tmp_path / "x.npy")
    assert (r.exit_code, r.stderr) == (1, f"Error: {line}\n")
    r = cli("repack", own, "--format", "i2s", "-o", tmp_path / "x.gguf")
    assert (r.exit_code, r.stderr) == (1, f"Error: {own}: {line}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf" + SIDECAR_SUFFIX]


def test_repack_to_hf_and_back_gives_bitconvs_file(files, tmp_path):
    # bitnet.cpp's file + its ini -> hf -> the format again: pack's file, key and sidecar
    fmt, own = files["fmt"], files["own"]
    hf = tmp_path / "hf" / NAME  # general.name is the directory's
    hf.parent.mkdir()
    r = cli("repack", files["bnc"], "--format", "hf", "-o", hf, "--kernel-config", files["ini"])
    assert r.exit_code == 0, r.stderr
    # the one key packing it again adds: bitnet.cpp's file has no tiling key
    assert r.stderr == f"note: packing {hf} again changes GGUF keys: {KV_KEY}\n"
    r = cli("repack", hf, "--format", fmt, "-o", tmp_path / "back.gguf")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "back.gguf").read_bytes() == own.read_bytes()
