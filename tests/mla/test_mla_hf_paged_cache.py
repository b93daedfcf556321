"""transformers' generate() with pygen's paged latent cache: PagedMLATransformersCache on a tiny
random DeepseekV3ForCausalLM whose attention layers were swapped for pygen.nn.MLA gives the same
greedy tokens as the unpatched eager model with transformers' default cache, and every decode step
ran absorbed mla_decode on the pages (no per-step copy of the cache). Plus the refused uses."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from helpers import MODULE_BACKENDS as BACKENDS
from test_mla_transformers import _model

import pygen.integrations.transformers_mla as tm
from pygen.integrations.transformers_paged_cache import PagedMLATransformersCache
from pygen.nn.mla import MLA

# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(b=2, s=7, seed=5):
    # tokens >= 2: no pad (0) in the prompt, so generate builds no padding mask
    return torch.randint(2, 97, (b, s), generator=torch.Generator().manual_seed(seed))


def _record_paths(model):
    paths: dict[int, list[str]] = {}
    for m in model.modules():
        if isinstance(m, MLA):
            m.register_forward_hook(lambda mod, a, o: paths.setdefault(mod.layer_idx, []).append(mod.last_path))
    return paths


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_with_paged_cache_matches_eager(backend):
    model = _model(seed=2)
    ids = _ids()
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert tm.patch_deepseek_attention(model, backend=backend) == {"DeepseekV3Attention": 2}
    paths = _record_paths(model)
    # page 4: the 7 + 5 cached tokens of a row span 3 pages, the prompt ends inside one
    cache = PagedMLATransformersCache(model.config, max_batch_size=2, max_cache_len=16, page_size=4, backend=backend)
    with torch.no_grad():
        got = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, cache=cache)
    assert torch.equal(got, want), (got, want)
    # one prefill forward, then 5 decode forwards, each layer on the paged path
    assert paths == {i: ["mla_prefill"] + ["mla_decode (absorbed)"] * 5 for i in (0, 1)}
    assert cache.get_seq_length() == 12 and cache.get_mask_sizes(1, 0) == (13, 0)
    assert cache.paged.kv[0].shape == (2 * 4, 4, 1, 576) and cache.paged.kv[0].dtype == torch.float32
    assert cache.paged.num_free_blocks == 8 - 2 * 3 and not cache.is_compileable
    # continuing the same cache: generate feeds only the tokens the cache has not seen (explicit
    # all-ones mask: a generated token may equal pad_token_id, which generate would mask as padding)
    am = torch.ones_like(got)
    with torch.no_grad():
        more = model.generate(got, attention_mask=am, max_new_tokens=2, do_sample=False, pad_token_id=0, cache=cache)
        ref = model.generate(got, attention_mask=am, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert torch.equal(more, ref) and cache.get_seq_length() == 14
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.paged.num_free_blocks == 8


def test_paged_cache_refuses_what_it_cannot_serve():
    model = _model(seed=2)
    ids = _ids()
    cache = PagedMLATransformersCache(model.config, max_batch_size=2, max_cache_len=16, page_size=4)
    with torch.no_grad(), pytest.raises(TypeError, match="patch_deepseek_attention"):
        model(ids, cache=cache)  # transformers' attention layers
    tm.patch_deepseek_attention(model, backend="reference")
    with torch.no_grad():
        with pytest.raises(ValueError, match="max_batch_size"):
            model(_ids(b=3), cache=PagedMLATransformersCache(model.config, 2, 16, page_size=4))
        with pytest.raises(ValueError, match="max_cache_len"):
            model(ids, cache=PagedMLATransformersCache(model.config, 2, 6, page_size=4))
        am = torch.ones(2, 7, dtype=torch.long)
        am[0, :2] = 0  # left padding
        padded = PagedMLATransformersCache(model.config, 2, 16, page_size=4)
        with pytest.raises(ValueError, match="unpadded"):
            model(ids, attention_mask=am, cache=padded)
        assert padded.get_seq_length() == 0  # nothing committed
        model(ids, cache=padded)  # the failed step was rolled back
        assert padded.get_seq_length() == 7 and padded.paged.num_free_blocks == 8 - 2 * 2
        with pytest.raises(NotImplementedError, match="beam"):
            padded.reorder_cache(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="power of two"):
        PagedMLATransformersCache(model.config, 2, 16, page_size=6)
