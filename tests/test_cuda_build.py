"""The compiled core without a GPU (CI): it builds, imports, reports its variants and tile
shapes, binds its parameter struct, and a call without a GPU raises a clear error instead of crashing."""
import importlib
import itertools
import os

import pytest
import torch

from jvp_flash_attn.backends import cuda_backend, cuda_module


def _module_or_skip():
    m = cuda_module.load_module()
    if m is None:
        pytest.skip(cuda_module.module_error())
    return m


def test_unbuilt_extension_is_reported_by_availability():
    if cuda_module.load_module() is not None:
        pytest.skip("the extension is built here")
    assert cuda_backend.CudaBackend().availability().startswith("compiled extension not built")


def test_module_lists_its_variants_and_tile_shapes():
    m = _module_or_skip()
    variants = {tuple(v) for v in m.variants()}
    assert ("fwd", "bf16", 128, 128) in variants  # every build profile, the CI one too
    assert ("jvp", "bf16", 128, 128) in variants
    assert ("bwd", "bf16", 128, 128) in variants
    for family, dqk, dv in itertools.product(("portable", "sm90a"), (64, 128), (64, 128)):
        shapes = m.tile_shapes(family, dqk, dv)
        assert set(shapes) == {"fwd", "jvp", "bwd_q", "bwd_kv", "bwd_fused"}
        # the fused backward is sm_90a's only one (64 query rows, 128 at head dim 64; whole
        # warpgroups of keys), the two-kernel backward the portable family's
        assert (shapes["bwd_fused"] is not None) == (family == "sm90a")
        assert (shapes["bwd_q"] is None) == (shapes["bwd_kv"] is None) == (family == "sm90a")
        if shapes["bwd_fused"] is not None:
            assert shapes["bwd_fused"][0] == (128 if max(dqk, dv) == 64 else 64) and shapes["bwd_fused"][1] % 64 == 0
        for key in ("fwd", "jvp", "bwd_q", "bwd_kv"):
            if shapes[key] is not None:
                bm, bn = shapes[key]
                assert bm % 16 == 0 and bn % 16 == 0
        if family == "sm90a":   # whole warpgroups of query rows
            assert all(shapes[key][0] % 64 == 0 for key in ("fwd", "jvp"))
    with pytest.raises(ValueError, match="family"):
        m.tile_shapes("hopper", 128, 128)


def test_default_tile_shapes():
    """The shapes of jfa/tile_shapes.h in a build without JFA_TILES overrides."""
    m = _module_or_skip()
    if m.build_info()["tiles"]:
        pytest.skip(f"built with JFA_TILES={m.build_info()['tiles']}")
    for dqk, dv in itertools.product((64, 128), (64, 128)):
        assert m.tile_shapes("portable", dqk, dv) == {"fwd": (128, 64), "jvp": (128, 32), "bwd_q": (128, 64),
                                                      "bwd_kv": (64, 128), "bwd_fused": None}
    # sm_90a: the larger of the two head dims decides (the registers and shared memory scale with it)
    for dqk, dv in ((128, 128), (64, 128), (128, 64)):
        assert m.tile_shapes("sm90a", dqk, dv) == {"fwd": (128, 176), "jvp": (128, 64), "bwd_q": None,
                                                   "bwd_kv": None, "bwd_fused": (64, 128)}
    # at d = 64: wider key tiles in the forward and JVP, 128-query steps in the backward
    assert m.tile_shapes("sm90a", 64, 64) == {"fwd": (128, 224), "jvp": (128, 128), "bwd_q": None, "bwd_kv": None,
                                              "bwd_fused": (128, 128)}


def test_parameter_struct_is_typed():
    """The launch arguments are one struct mirroring jfa/params.h: fields keep their types and an
    unknown field is an error, not a silently ignored key."""
    m = _module_or_skip()
    p = m.AttnParams()
    assert p.q == 0 and p.family == m.KernelFamily.portable
    p.q, p.q_stride, p.family = 1 << 40, (3, 2, 1), m.KernelFamily.sm90a
    p.q_tiles.full_ptr = 16
    assert (p.q, p.q_stride, p.family, p.q_tiles.full_ptr) == (1 << 40, (3, 2, 1), m.KernelFamily.sm90a, 16)
    with pytest.raises(AttributeError):
        p.not_a_field = 1
    with pytest.raises(TypeError):
        p.q_stride = (1, 2)


def test_portable_family_switch_is_read_once_in_python():
    """JFA_CUDA_SM90=0 runs the portable kernels on Hopper too: read once by the kernel choice."""
    m = _module_or_skip()
    if m.device_count() == 0:
        pytest.skip("needs a GPU")
    import subprocess
    import sys
    code = ("from jvp_flash_attn.backends import cuda_kernel_choice as c; "
            "print(c.PORTABLE_ONLY, c.device_family(0))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, JFA_CUDA_SM90="0"),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True portable"


def test_module_needs_no_torch():
    """The core is bound with pybind11 alone: importing it must not pull torch's C++ library."""
    m = _module_or_skip()
    with open(m.__file__, "rb") as f:
        blob = f.read()
    assert b"libtorch" not in blob and b"libc10" not in blob


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_call_without_gpu_raises_clear_error():
    m = _module_or_skip()
    assert cuda_backend.CudaBackend().availability() == "no CUDA GPU"
    p = m.AttnParams()
    p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_k, p.head_dim_qk, p.head_dim_v = 1, 128, 128, 1, 1, 128, 128
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        m.forward(p, "bf16", 0, 0)


def test_registry_lists_cuda_first():
    backends = importlib.import_module("jvp_flash_attn.backends")
    assert backends.NAMES[0] == "cuda"


@pytest.mark.parametrize("family", ["portable", "sm90a"])
def test_launch_arguments_fill_the_struct(family):
    """Each direction's arguments as the cuda backend builds them (CPU tensors stand in for the
    GPU's): every field it sets exists, and the tile descriptions have the family's shapes."""
    m = _module_or_skip()
    from jvp_flash_attn import masks
    from jvp_flash_attn.backends import cuda_kernel_choice as kc, cuda_launch_args as la
    shapes = {walk: shape and tuple(shape) for walk, shape in m.tile_shapes(family, 128, 128).items()}
    kernels = kc.DeviceKernels(family, shapes["fwd"], shapes["jvp"], shapes["bwd_q"], shapes["bwd_kv"],
                               shapes["bwd_fused"])
    mask = masks.block_causal(masks.FramePattern(40, 5)).with_zero_tangents(q_ranges=[(0, 40)], k_ranges=[(0, 40)])
    q, k, v = (torch.zeros(2, mask.sq, 2, 128, dtype=torch.bfloat16) for _ in range(3))
    o, lse = torch.zeros_like(q), torch.zeros(2, 2, mask.sq)
    choice = kc.KernelChoice(family, kernels.fwd)
    p = la.forward_params(m, choice, mask, q, k, v, 0.1, o, lse)
    assert (p.q_tiles_block_m, p.q_tiles_block_n) == kernels.fwd and p.family == getattr(m.KernelFamily, family)
    assert p.q == q.data_ptr() and p.q_stride == q.stride()[:3] and p.num_q_tiles == -(-mask.sq // kernels.fwd[0])
    p = la.jvp_params(m, kc.KernelChoice(family, kernels.jvp), mask, q, k, v, q, k, v, 0.1, o, o, lse)
    assert p.tq == q.data_ptr() and p.to == o.data_ptr() and p.q_zero_tangent != 0
    assert p.zero_tangent_hint and p.k_zero_tangent == mask.tiles(*kernels.jvp).k_zero_tangent.data_ptr()
    # the key side selects the hinted JVP; a query-side promise alone is served before the kernels
    p = la.jvp_params(m, kc.KernelChoice(family, kernels.jvp), mask.with_zero_tangents(q_ranges=[(0, 40)]),
                      q, k, v, q, k, v, 0.1, o, o, lse)
    assert not p.zero_tangent_hint and p.k_zero_tangent == 0
    forms = ["fused", "fused-ordered"] if kernels.bwd_fused is not None else ["two-kernel"]
    for form in forms:
        fused, ordered = form != "two-kernel", form == "fused-ordered"
        # the fused backward: one description, its own shape, serves both sides
        choice = (kc.KernelChoice(family, kernels.bwd_fused, kernels.bwd_fused, form) if fused
                  else kc.KernelChoice(family, kernels.bwd_q, kernels.bwd_kv, form))
        q_tiles = -(-mask.sq // choice.k_tiles[0])   # one group: one buffer, one counter per dQ tile
        semaphore = torch.zeros(2, 2, q_tiles, dtype=torch.int32) if ordered else None
        accum = torch.zeros(1, 2, 2, q_tiles * choice.k_tiles[0], 128) if fused else None
        p = la.backward_params(m, choice, mask, q, k, v, o, lse, o, 0.1, q, k, v, lse, accum, semaphore)
        assert p.do_ == o.data_ptr() and p.do_stride == o.stride()[:3] and p.delta == lse.data_ptr()
        assert (p.k_tiles_block_m, p.k_tiles_block_n) == choice.k_tiles and (p.dq_accum != 0) == fused
        assert p.dq_order == (m.DqOrder.key_tile if ordered else m.DqOrder.arrival) and p.dq_groups == 1
        if ordered:   # the turns walk the key-side lists: same pointers, their own entries
            desc = mask.tiles(*choice.k_tiles)
            assert p.dq_semaphore == semaphore.data_ptr() and p.dq_turns.full_ptr == p.k_tiles.full_ptr
            assert p.dq_turns.full_idx == desc.dq_turns[0].data_ptr() and p.dq_turns.part_idx == desc.dq_turns[1].data_ptr()
        # the walk order is the ordered form's only; the PARTIAL tiles' runs go with their lists
        k_desc = mask.tiles(*choice.k_tiles)
        assert p.k_tiles.order == (k_desc.k_walk_order.data_ptr() if ordered else 0)
        assert p.k_tiles.part_runs == k_desc.k_part_runs.data_ptr()
        assert p.q_tiles.part_runs == mask.tiles(*choice.q_tiles).q_part_runs.data_ptr() and p.q_tiles.order == 0


def test_ordered_backward_dq_groups():
    """The ordered backward's dQ groups as the cuda backend picks and passes them (CPU tensors stand
    in for the GPU's): two for a KV-cache step whose every query tile is visited by 256 key tiles,
    one for a short mask or past the byte budget; the struct carries G, the buffers' tiles and the
    turns ranked within each group, and sizes that do not match G are refused."""
    m = _module_or_skip()
    from jvp_flash_attn import masks
    from jvp_flash_attn.backends import cuda_kernel_choice as kc, cuda_launch_args as la
    shapes = {walk: shape and tuple(shape) for walk, shape in m.tile_shapes("sm90a", 128, 128).items()}
    bm, bn = shapes["bwd_fused"]
    kv = masks.kv_cache(masks.FramePattern(1560, 21, 3), query_chunk=6)   # W7: 4,680 queries, 32,760 keys
    desc = kv.tiles(bm, bn)
    assert desc.longest_dq_chain() == desc.num_k_tiles == 256
    b, hq, dqk = 1, 2, 128
    q_tiles = -(-kv.sq // bm)
    buffer = b * hq * q_tiles * bm * dqk * 4
    assert la.dq_groups(desc, buffer) == 2
    assert la.dq_groups(desc, la.DQ_GROUP_BYTES // 2 + 4) == 1   # two buffers would pass the budget
    short = masks.block_causal(masks.FramePattern(40, 5))
    assert la.dq_groups(short.tiles(bm, bn), 1) == 1
    q = torch.zeros(b, kv.sq, hq, dqk, dtype=torch.bfloat16)
    k = v = torch.zeros(b, kv.sk, hq, dqk, dtype=torch.bfloat16)
    lse = torch.zeros(b, hq, kv.sq)
    ordered = kc.KernelChoice("sm90a", (bm, bn), (bm, bn), "fused-ordered")
    accum = torch.zeros(2, b, hq, q_tiles * bm, dqk)
    semaphore = torch.zeros(2, b, hq, q_tiles, dtype=torch.int32)
    p = la.backward_params(m, ordered, kv, q, k, v, q, lse, q, 0.1, q, k, v, lse, accum, semaphore, 2)
    assert p.dq_groups == 2 and p.dq_group_tiles == b * hq * q_tiles and p.dq_order == m.DqOrder.key_tile
    full, part = desc.dq_group_turns(2, 1)
    assert p.dq_turns.full_idx == full.data_ptr() and p.dq_turns.part_idx == part.data_ptr()
    assert p.dq_turns.full_ptr == p.k_tiles.full_ptr
    assert int(full.max()) == 127   # each group: 128 key tiles visit every query tile
    with pytest.raises(ValueError, match="2 groups"):
        la.backward_params(m, ordered, kv, q, k, v, q, lse, q, 0.1, q, k, v, lse, accum[:1], semaphore, 2)
    with pytest.raises(ValueError, match="the ordered backward's"):
        la.backward_params(m, kc.KernelChoice("sm90a", (bm, bn), (bm, bn), "fused"), kv, q, k, v, q, lse, q, 0.1,
                           q, k, v, lse, accum, None, 2)
    # the module refuses groups that are not a power of two, and groups in the fast form
    for groups, order in ((3, m.DqOrder.key_tile), (2, m.DqOrder.arrival)):
        p.dq_groups, p.dq_order = groups, order
        with pytest.raises(ValueError, match="dq_groups must be 1"):
            m.backward(p, "bf16", 0, 0)


def test_inputs_the_tma_unit_cannot_describe_are_copied():
    """Operands reach the kernels with 16-byte aligned strides and none of them 0 along a
    dimension longer than 1 (the TMA unit's terms): an expanded tensor is made contiguous, a
    packed qkv view and a size-1 expanded dimension are passed as they are."""
    from jvp_flash_attn.backends.cuda_launch_args import aligned
    k = torch.randn(1, 40, 2, 64, dtype=torch.bfloat16)
    expanded = k.expand(3, -1, -1, -1)                     # batch stride 0
    out = aligned(expanded)
    assert out is not expanded and out.is_contiguous() and torch.equal(out, expanded)
    heads = k[:, :, :1].expand(-1, -1, 4, -1)              # head stride 0 (GQA by expand)
    assert aligned(heads).stride(2) > 0
    qkv = torch.randn(2, 40, 3, 2, 64, dtype=torch.bfloat16)
    q = qkv[:, :, 0]
    assert aligned(q) is q
    single = torch.randn(1, 40, 2, 64, dtype=torch.bfloat16).expand(1, -1, -1, -1)
    assert aligned(single) is single
