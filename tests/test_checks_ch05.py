"""Chapter 5 checks accept the reference solutions and reject the usual mistakes, with hints.

The wrong candidates are small edits of a right one, each a plausible slip with a name; the table
FAILING pairs each with the phrase its hint must contain.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib import block as gblock
from gptlib import model as gmodel
from gptlib.embeddings import PositionalEmbedding, TokenEmbedding
from gptlib.exercises import registry, run_check



# ------------------------------------------------------------------ 5.1 LayerNorm
def ln_class(formula, always_bias=False, cast=True):
    """A LayerNorm class whose forward (fused=False) is ``formula(x, weight, bias, eps)``."""
    class LN(nn.Module):
        def __init__(self, ndim, bias=True, eps=1e-5, fused=True):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(ndim))
            self.bias = nn.Parameter(torch.zeros(ndim)) if bias or always_bias else None

        def forward(self, x):
            xf = x.float()
            y = formula(xf, self.weight, 0.0 if self.bias is None else self.bias, self.eps)
            return y.to(x.dtype) if cast else y
    LN.__name__ = formula.__name__
    return LN


def _biased(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _eps_outside(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / (x.std(-1, unbiased=False, keepdim=True) + eps) * w + b


def _unbiased(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b


def _no_affine(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def _wrong_axis(x, w, b, eps):
    mean = x.mean(0, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps) * w + b


def _no_eps(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True)) * w + b


ln_written = ln_class(_biased)
ln_eps_outside = ln_class(_eps_outside)
ln_unbiased = ln_class(_unbiased)
ln_no_affine = ln_class(_no_affine)
ln_wrong_axis = ln_class(_wrong_axis)
ln_no_eps = ln_class(_no_eps)
ln_float32_out = ln_class(_biased, cast=False)
ln_always_bias = ln_class(_biased, always_bias=True)
ln_float32_out.__name__, ln_always_bias.__name__ = "ln_float32_out", "ln_always_bias"


class LNTodo(nn.Module):
    def __init__(self, ndim, bias=True, eps=1e-5, fused=True):
        super().__init__()
        raise NotImplementedError


# ------------------------------------------------------------------ 5.2 GELU
def gelu_class(fn):
    class G(nn.Module):
        def __init__(self, fused=True):
            super().__init__()

        def forward(self, x):
            return fn(x)
    G.__name__ = fn.__name__
    return G


_C = math.sqrt(2 / math.pi)
gelu_written = gelu_class(lambda x: 0.5 * x * (1 + torch.tanh(_C * (x + 0.044715 * x ** 3))))
gelu_erf = gelu_class(lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))
gelu_no_half = gelu_class(lambda x: x * (1 + torch.tanh(_C * (x + 0.044715 * x ** 3))))
gelu_no_coef = gelu_class(lambda x: 0.5 * x * (1 + torch.tanh(_C * (x + x ** 3))))
gelu_relu = gelu_class(torch.relu)
for _name in ("gelu_written", "gelu_erf", "gelu_no_half", "gelu_no_coef", "gelu_relu"):
    globals()[_name].__name__ = _name


# ------------------------------------------------------------------ 5.3 MLP
class MLPRelu(gblock.MLP):
    def forward(self, x):
        return self.dropout(self.c_proj(F.relu(self.c_fc(x))))


class MLPFixedWidth(gblock.MLP):
    def __init__(self, n_embd, dropout=0.0, bias=True, expansion=4):
        super().__init__(n_embd, dropout, bias, expansion=4)


class MLPDropoutInside(gblock.MLP):
    def forward(self, x):
        return self.c_proj(self.dropout(self.gelu(self.c_fc(x))))


class MLPAlwaysBias(gblock.MLP):
    def __init__(self, n_embd, dropout=0.0, bias=True, expansion=4):
        super().__init__(n_embd, dropout, True, expansion)


class MLPOtherNames(nn.Module):
    def __init__(self, n_embd, dropout=0.0, bias=True, expansion=4):
        super().__init__()
        self.fc = nn.Linear(n_embd, expansion * n_embd, bias=bias)
        self.act = gblock.GELU()
        self.proj = nn.Linear(expansion * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.proj(self.act(self.fc(x))))


# ------------------------------------------------------------------ 5.4 / 5.5 blocks
class BlockPostLN(gblock.Block):
    def forward(self, x, cache=None):
        x = self.ln_1(x + self.attn(x, cache=cache))
        return self.ln_2(x + self.mlp(x))


class BlockNoResidual(gblock.Block):
    def forward(self, x, cache=None):
        return self.mlp(self.ln_2(self.attn(self.ln_1(x), cache=cache)))


class BlockAttnNoResidual(gblock.Block):
    def forward(self, x, cache=None):
        x = self.attn(self.ln_1(x), cache=cache)
        return x + self.mlp(self.ln_2(x))


class BlockNormOnResidual(gblock.Block):
    def forward(self, x, cache=None):
        x = self.ln_1(x) + self.attn(self.ln_1(x), cache=cache)
        return self.ln_2(x) + self.mlp(self.ln_2(x))


class BlockDropsCache(gblock.Block):
    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class BlockCachePositional(gblock.Block):
    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class BlockFixedHeads(gblock.Block):
    def __init__(self, config):
        super().__init__(config)
        self.attn = gblock.CausalSelfAttention(config.n_embd, 1, dropout=config.dropout,
                                               bias=config.bias, block_size=config.block_size)


class BlockNoBlockSize(gblock.Block):
    def __init__(self, config):
        super().__init__(config)
        self.attn = gblock.CausalSelfAttention(config.n_embd, config.n_head, bias=config.bias)


class PostIsPreLN(gblock.Block):
    """A 'PostLNBlock' that forgot to override forward."""


class PostNoResidual(gblock.Block):
    def forward(self, x, cache=None):
        x = self.ln_1(self.attn(x, cache=cache))
        return self.ln_2(self.mlp(x))


class PostDropsCache(gblock.Block):
    def forward(self, x, cache=None):
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


# ------------------------------------------------------------------ 5.6 - 5.8 GPT
def _modules(self, config, block_cls=gblock.Block, head_bias=False, ln_f=True, fixed=None):
    parts = dict(wte=TokenEmbedding(config.vocab_size, config.n_embd),
                 wpe=PositionalEmbedding(config.block_size, config.n_embd),
                 drop=nn.Dropout(config.dropout),
                 h=nn.ModuleList((fixed or block_cls)(config) for _ in range(config.n_layer)))
    if ln_f:
        parts["ln_f"] = gblock.LayerNorm(config.n_embd, bias=config.bias)
    self.transformer = nn.ModuleDict(parts)
    self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=head_bias)


def gpt_class(name, tie="tie", **parts):
    """A GPT whose __init__ builds ``_modules(**parts)`` and ties ("tie"), copies or leaves the head."""
    class Variant(gmodel.GPT):
        def __init__(self, config, block_cls=gblock.Block):
            nn.Module.__init__(self)
            self.config = config
            _modules(self, config, block_cls, **parts)
            if tie == "tie":
                self.lm_head.weight = self.transformer.wte.weight
            elif tie == "copy":
                with torch.no_grad():
                    self.lm_head.weight.copy_(self.transformer.wte.weight)
            self.reset_parameters()
    Variant.__name__ = name
    return Variant


GPTUntied = gpt_class("GPTUntied", tie=None)
GPTCopiedHead = gpt_class("GPTCopiedHead", tie="copy")
GPTFixedBlock = gpt_class("GPTFixedBlock", fixed=gblock.Block)
GPTHeadBias = gpt_class("GPTHeadBias", head_bias=True)
GPTNoLnF = gpt_class("GPTNoLnF", ln_f=False)


def _init(self, std, scale_fn=lambda L: 1 / math.sqrt(2 * L), scaled=("c_proj",), fixed_std=None,
          zero_bias=True):
    std = fixed_std or std
    resid = std * scale_fn(self.config.n_layer)
    with torch.no_grad():
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, resid if name.endswith(scaled) else std)
                if module.bias is not None and zero_bias:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, gblock.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.transformer.wte.weight, 0.0, std)
        nn.init.normal_(self.transformer.wpe.weight, 0.0, std)


class InitUnscaled(gmodel.GPT):
    def reset_parameters(self, std=0.02):
        _init(self, std, scale_fn=lambda L: 1.0)


class InitSqrtL(gmodel.GPT):
    def reset_parameters(self, std=0.02):
        _init(self, std, scale_fn=lambda L: 1 / math.sqrt(L))


class InitScalesEverything(gmodel.GPT):
    def reset_parameters(self, std=0.02):
        _init(self, std, scaled=("c_proj", "c_attn", "c_fc"))


class InitIgnoresStd(gmodel.GPT):
    def reset_parameters(self, std=0.02):
        _init(self, std, fixed_std=0.02)


class InitKeepsBiases(gmodel.GPT):
    def reset_parameters(self, std=0.02):
        _init(self, std, zero_bias=False)


def hidden_variant(name, positions=True, from_cache_length=True, ln_f=True, pass_cache=True):
    """A GPT whose hidden_states leaves out one step (each flag False is one slip)."""
    class Variant(gmodel.GPT):
        def hidden_states(self, idx, cache=None):
            start = len(cache) if cache is not None and from_cache_length else 0
            tr = self.transformer
            x = tr.drop(tr.wte(idx) + (tr.wpe(idx, start) if positions else 0))
            layers = cache.layers if cache is not None and pass_cache else [None] * len(tr.h)
            for block, layer_cache in zip(tr.h, layers):
                x = block(x, cache=layer_cache)
            return tr.ln_f(x) if ln_f else x
    Variant.__name__ = name
    return Variant


ForwardNoPositions = hidden_variant("ForwardNoPositions", positions=False)
ForwardNoLnF = hidden_variant("ForwardNoLnF", ln_f=False)
ForwardPositionsFromZero = hidden_variant("ForwardPositionsFromZero", from_cache_length=False)
ForwardCacheNotPassed = hidden_variant("ForwardCacheNotPassed", pass_cache=False)


class ForwardLossSum(gmodel.GPT):
    def forward(self, idx, targets=None, cache=None):
        logits = self.lm_head(self.hidden_states(idx, cache))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                       reduction="sum")


class ForwardShiftsAgain(gmodel.GPT):
    def forward(self, idx, targets=None, cache=None):
        logits = self.lm_head(self.hidden_states(idx, cache))
        if targets is None:
            return logits, None
        V = logits.size(-1)
        return logits, F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1))


class ForwardMeanOverAll(gmodel.GPT):
    def forward(self, idx, targets=None, cache=None):
        logits = self.lm_head(self.hidden_states(idx, cache))
        if targets is None:
            return logits, None
        t = targets.reshape(-1)
        per = F.cross_entropy(logits.reshape(-1, logits.size(-1)), t, reduction="none")
        return logits, per.sum() / t.numel()


class ForwardLogitsOnly(gmodel.GPT):
    def forward(self, idx, targets=None, cache=None):
        logits = self.lm_head(self.hidden_states(idx, cache))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class GPTTodo(gmodel.GPT):
    def __init__(self, config, block_cls=gblock.Block):
        nn.Module.__init__(self)
        raise NotImplementedError


# ------------------------------------------------------------------ 5.9 HF conversion
_CONV = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _is_mask(key):
    return key.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"])


def _name(key):
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def conv_no_transpose(sd):
    return {_name(k): v for k, v in sd.items() if not _is_mask(k)}


def conv_transpose_by_shape(sd):
    return {_name(k): (v.t() if v.dim() == 2 and v.shape[0] != v.shape[1] and "wte" not in k
                       and "wpe" not in k and "lm_head" not in k else v)
            for k, v in sd.items() if not _is_mask(k)}


def conv_transpose_all(sd):
    return {_name(k): (v.t() if v.dim() == 2 else v) for k, v in sd.items() if not _is_mask(k)}


def conv_keeps_buffers(sd):
    return {_name(k): (v.t() if k.endswith(_CONV) else v) for k, v in sd.items()}


def conv_drops_attn_biases(sd):
    return {_name(k): (v.t() if k.endswith(_CONV) else v) for k, v in sd.items()
            if not (".attn." in k and k.endswith("bias"))}


def conv_no_prefix(sd):
    return {k: (v.t() if k.endswith(_CONV) else v) for k, v in sd.items() if not _is_mask(k)}


def conv_double_prefix(sd):
    return {f"transformer.{k}" if not k.startswith("lm_head.") else k: (v.t() if k.endswith(_CONV) else v)
            for k, v in sd.items() if not _is_mask(k)}


def conv_in_place(sd):
    for k in [k for k in sd if _is_mask(k)]:
        del sd[k]
    return {_name(k): (v.t() if k.endswith(_CONV) else v) for k, v in sd.items()}


# ------------------------------------------------------------------ 5.6 num_parameters, 5.8 next_token_logits
class CountsStateDict(gmodel.GPT):
    def num_parameters(self, non_embedding=False):
        n = sum(t.numel() for t in self.state_dict().values())   # the tied matrix twice
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n


class NonEmbeddingKeepsWpe(gmodel.GPT):
    def num_parameters(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wte.weight.numel() if non_embedding else n


class NextFirstPosition(gmodel.GPT):
    def next_token_logits(self, idx, cache=None):
        return self.lm_head(self.hidden_states(idx, cache)[:, 0])


class NextAllPositions(gmodel.GPT):
    def next_token_logits(self, idx, cache=None):
        return self.lm_head(self.hidden_states(idx, cache))


# ------------------------------------------------------------------ 5.10 loading
def _load_with(copy, pop_head=True, compare_head=True, check_fit=True):
    """A load_hf_state_dict whose steps can each be left out or done another way."""
    @torch.no_grad()
    def load(model, state_dict):
        tensors = gmodel.convert_hf_state_dict(state_dict)
        if pop_head:
            head = tensors.pop("lm_head.weight", None)
            wte = tensors.get("transformer.wte.weight")
            if compare_head and head is not None and not torch.equal(head, wte):
                raise ValueError("lm_head.weight differs from transformer.wte.weight")
        params = dict(model.named_parameters())
        if check_fit:
            gmodel._check_fit(model, params, tensors)
        copy(model, params, tensors)
        return model
    return load


def _copy_in_place(model, params, tensors):
    for key, param in params.items():
        param.copy_(tensors[key].to(dtype=param.dtype, device=param.device))


def _assign_data(model, params, tensors):
    for key, param in params.items():
        param.data = tensors[key]                 # the checkpoint's dtype, and its storage


def _assign_parameters(model, params, tensors):
    model.load_state_dict(tensors, strict=False, assign=True)   # new Parameters: the tie breaks


load_silently_untied = _load_with(_copy_in_place, compare_head=False)
load_keeps_head = _load_with(_copy_in_place, pop_head=False)
load_skips_check_fit = _load_with(_copy_in_place, check_fit=False)
load_assigns_data = _load_with(_assign_data)
load_assigns_parameters = _load_with(_assign_parameters)


def load_todo(model, state_dict):
    raise NotImplementedError


# ------------------------------------------------------------------ 5.11 parameter breakdown
def _breakdown_with(params_of, size=lambda p: p.numel(), ln=(".ln_1.", ".ln_2.", ".ln_f."), strict=True):
    def breakdown(model):
        groups = dict.fromkeys(["token embedding", "position embedding", "attention", "MLP",
                                "LayerNorm", "LM head (untied)"], 0)
        for name, p in params_of(model):
            if name.startswith("transformer.wte."):
                key = "token embedding"
            elif name.startswith("transformer.wpe."):
                key = "position embedding"
            elif ".attn." in name:
                key = "attention"
            elif ".mlp." in name:
                key = "MLP"
            elif any(part in name for part in ln):
                key = "LayerNorm"
            elif name.startswith("lm_head."):
                key = "LM head (untied)"
            elif strict:
                raise ValueError(f"parameter {name} belongs to no known group")
            else:
                continue
            groups[key] += size(p)
        return groups
    return breakdown


breakdown_state_dict = _breakdown_with(lambda m: m.state_dict().items())   # the tied head twice
breakdown_first_dim = _breakdown_with(lambda m: m.named_parameters(), size=lambda p: p.shape[0])
breakdown_blocks_ln_only = _breakdown_with(lambda m: m.named_parameters(), ln=(".ln_1.", ".ln_2."))
breakdown_ignores_strangers = _breakdown_with(lambda m: m.named_parameters(), strict=False)


def breakdown_todo(model):
    raise NotImplementedError


# ------------------------------------------------------------------ 5.12 parameter count
def count_ref(c):
    V, T, L, C, b = c.vocab_size, c.block_size, c.n_layer, c.n_embd, int(c.bias)
    ln = C + b * C
    block = 2 * ln + (3 * C * C + 3 * b * C + C * C + b * C) + (8 * C * C + 4 * b * C + b * C)
    return V * C + T * C + L * block + ln


def count_untied(c):
    return count_ref(c) + c.vocab_size * c.n_embd


def count_no_positions(c):
    return count_ref(c) - c.block_size * c.n_embd


def count_no_layernorm(c):
    return count_ref(c) - (2 * c.n_layer + 1) * c.n_embd * (2 if c.bias else 1)


def count_always_bias(c):
    from dataclasses import replace
    return count_ref(replace(c, bias=True))


# ------------------------------------------------------------------ 5.13 residual stream
def stds_ref(model, idx):
    """The measurement through forward hooks on the blocks (another way than the check's own)."""
    seen = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: seen.append(out.std().item()))
             for b in model.transformer.h]
    tr = model.transformer
    first = (tr.wte(idx) + tr.wpe(idx)).std().item()
    model.hidden_states(idx)            # eval mode: dropout does nothing
    for hook in hooks:
        hook.remove()
    return [first, *seen]


def stds_no_positions(model, idx):
    return [model.transformer.wte(idx).std().item(), *stds_ref(model, idx)[1:]]


def stds_after_ln_f(model, idx):
    out = stds_ref(model, idx)
    out[-1] = model.hidden_states(idx).std().item()
    return out


def stds_blocks_only(model, idx):
    return stds_ref(model, idx)[1:]


def stds_todo(model, idx):
    raise NotImplementedError


# ------------------------------------------------------------------ the table
PASSING = [("5.1", ln_written), ("5.2", gelu_written), ("5.10", _load_with(_copy_in_place)),
           ("5.12", count_ref), ("5.13", stds_ref)]
LIBRARY = ["5.1", "5.2", "5.3", "5.4", "5.5", "5.6", "5.7", "5.8", "5.9", "5.10", "5.11"]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("5.1", ln_eps_outside, "inside the square root"),
    ("5.1", ln_unbiased, "unbiased"),
    ("5.1", ln_no_affine, "scale and shift"),
    ("5.1", ln_wrong_axis, "last dimension"),
    ("5.1", ln_no_eps, "add eps to the variance"),
    ("5.1", ln_float32_out, "bfloat16 output"),
    ("5.1", ln_always_bias, "bias=False"),
    ("5.2", gelu_erf, "exact (erf) GELU"),
    ("5.2", gelu_no_half, "0.5 * x"),
    ("5.2", gelu_no_coef, "0.044715"),
    ("5.2", gelu_relu, "ReLU"),
    ("5.3", MLPRelu, "ReLU"),
    ("5.3", MLPFixedWidth, "expansion * n_embd"),
    ("5.3", MLPDropoutInside, "apply self.dropout last"),
    ("5.3", MLPAlwaysBias, "bias=bias"),
    ("5.3", MLPOtherNames, "c_fc, gelu, c_proj, dropout"),
    ("5.4", BlockPostLN, "Post-LN"),
    ("5.4", BlockNoResidual, "residual connections are missing"),
    ("5.4", BlockAttnNoResidual, "attention sublayer has no residual"),
    ("5.4", BlockNormOnResidual, "carry x itself"),
    ("5.4", BlockDropsCache, "Chapter 7's KV cache"),
    ("5.4", BlockCachePositional, "pass it by name"),
    ("5.4", BlockFixedHeads, "config.n_head"),
    ("5.4", BlockNoBlockSize, "dropout and block_size"),
    ("5.5", PostIsPreLN, "normalises after each residual addition"),
    ("5.5", PostNoResidual, "the output differs from the PostLNBlock wiring"),
    ("5.5", PostDropsCache, "Chapter 7's KV cache"),
    ("5.6", GPTUntied, "weight tying"),
    ("5.6", GPTCopiedHead, "copy of the embedding"),
    ("5.6", GPTFixedBlock, "block_cls(config)"),
    ("5.6", GPTHeadBias, "no bias"),
    ("5.6", GPTNoLnF, "wte, wpe, drop, h and ln_f"),
    ("5.6", CountsStateDict, "counted twice"),
    ("5.6", NonEmbeddingKeepsWpe, "position table wpe"),
    ("5.7", InitUnscaled, "sqrt(2 * n_layer)"),
    ("5.7", InitSqrtL, "two such projections per block"),
    ("5.7", InitScalesEverything, "only the two c_proj weights"),
    ("5.7", InitIgnoresStd, "use the std argument"),
    ("5.7", InitKeepsBiases, "biases"),
    ("5.8", GPTUntied, "Exercise 5.6"),
    ("5.8", InitUnscaled, "Exercise 5.7"),
    ("5.8", ForwardNoPositions, "ignore the positions"),
    ("5.8", ForwardNoLnF, "final LayerNorm"),
    ("5.8", ForwardPositionsFromZero, "start at len(cache)"),
    ("5.8", ForwardCacheNotPassed, "cache.layers[i]"),
    ("5.8", ForwardLossSum, "not their sum"),
    ("5.8", ForwardShiftsAgain, "do not shift again"),
    ("5.8", ForwardMeanOverAll, "must not count in the mean"),
    ("5.8", ForwardLogitsOnly, "the pair (logits, loss)"),
    ("5.8", NextFirstPosition, "first position's"),
    ("5.8", NextAllPositions, "every position's logits"),
    ("5.9", conv_no_transpose, "Conv1D stores (in, out)"),
    ("5.9", conv_transpose_by_shape, "is square"),
    ("5.9", conv_transpose_all, "only the four Conv1D weights"),
    ("5.9", conv_keeps_buffers, "causal-mask buffer"),
    ("5.9", conv_drops_attn_biases, "real parameter"),
    ("5.9", conv_no_prefix, "no transformer. prefix"),
    ("5.9", conv_double_prefix, "prefix twice"),
    ("5.9", conv_in_place, "was changed"),
    ("5.10", load_silently_untied, "untied model"),
    ("5.10", load_keeps_head, "take it out of the converted tensors"),
    ("5.10", load_skips_check_fit, "KeyError"),
    ("5.10", load_assigns_data, "keeps its dtype"),
    ("5.10", load_assigns_parameters, "Parameters were replaced"),
    ("5.11", breakdown_state_dict, "tied head"),
    ("5.11", breakdown_first_dim, "p.numel()"),
    ("5.11", breakdown_blocks_ln_only, "ln_f is a LayerNorm too"),
    ("5.11", breakdown_ignores_strangers, "must raise a ValueError naming it"),
    ("5.12", count_untied, "tied"),
    ("5.12", count_no_positions, "position embedding"),
    ("5.12", count_no_layernorm, "LayerNorms"),
    ("5.12", count_always_bias, "bias=False"),
    ("5.13", stds_no_positions, "leaves out the positions"),
    ("5.13", stds_after_ln_f, "enters ln_f"),
    ("5.13", stds_blocks_only, "n_layer + 1"),
]

NOT_DONE = [("5.1", LNTodo), ("5.6", GPTTodo), ("5.7", GPTTodo), ("5.8", GPTTodo),
            ("5.10", load_todo), ("5.11", breakdown_todo), ("5.13", stds_todo)]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id", LIBRARY)
def test_gptlib_component_passes(exercise_id):
    result = run_check(exercise_id, registry()[exercise_id].reference())
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[f"{e}-{c.__name__}" for e, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


@pytest.mark.parametrize("exercise_id, candidate", NOT_DONE, ids=[e for e, _ in NOT_DONE])
def test_unfinished_exercise_is_not_done(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "not done"


def test_forward_check_works_without_transformers(monkeypatch):
    """Without Hugging Face, 5.8 compares with its functional GPT-2, and still names mistakes."""
    import sys
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert run_check("5.8", gmodel.GPT).status == "passed"
    result = run_check("5.8", ForwardNoPositions)
    assert result.status == "failed" and "ignore the positions" in result.message


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for eid in ("5.3", "5.6", "5.9"):
        run_check(eid, registry()[eid].reference())
    assert torch.equal(torch.rand(3), expected)
