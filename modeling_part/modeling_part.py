"""The PART speech-to-text model: a pretrained speech encoder, a fresh adapter and a pretrained causal LLM.

Adapter outputs replace the audio placeholder embeddings of the prompt; the loss is token cross-entropy over target
positions only, with the LM head applied to those positions alone (no `[batch, seq, vocab]` logits in training).
"""

import contextlib
import copy
import inspect
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, set_zero3_state, slice_logits_to_keep
from transformers.models.siglip.modeling_siglip import eager_attention_forward
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_part import (
    PartAdapterConfig,
    PartConfig,
    adapter_output_lengths,
    audio_encoder_class,
    encoder_family,
    encoder_output_lengths,
)


AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS_TOKEN = "<|audio_bos|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LORA_CONFIG = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
"""LoRA settings of `add_lora` and of a training stage that trains `llm_lora` without its own `lora`."""
LORA_SAVE_MODES = ("merged", "unmerged", "adapter_only")
# Whole-model checkpoints whose speech encoder PART takes: model_type -> (transformers class, its encoder).
ENCODERS_OF_FULL_MODELS = {
    "whisper": ("WhisperModel", lambda model: model.get_encoder()),
    "fun_asr_nano": ("FunAsrNanoForConditionalGeneration", lambda model: model.model.audio_tower),
}


def _json_value(value):
    """What json cannot write of a `peft.LoraConfig`: sets (as sorted lists), nested configs, enums."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value.to_dict() if hasattr(value, "to_dict") else value.value


def build_audio_tower(audio_config) -> PreTrainedModel:
    """The speech encoder for `audio_config` (its family's class, e.g. Whisper's encoder half, else AutoModel's)."""
    if encoder_family(audio_config)["encoder_class"] is not None:
        return audio_encoder_class(audio_config)(audio_config)
    return AutoModel.from_config(audio_config)


def load_pretrained_audio_encoder(name_or_path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """Loads a pretrained speech encoder: a bare encoder checkpoint (any the Auto classes load), or the encoder of a
    whole model in `ENCODERS_OF_FULL_MODELS` (Whisper, `fun_asr_nano`), whose config then records `name_or_path` so
    that a PART config (and its model card's `base_model`) says where the encoder came from."""
    import transformers

    model_type = AutoConfig.from_pretrained(name_or_path, **kwargs).model_type
    if model_type not in ENCODERS_OF_FULL_MODELS:
        return AutoModel.from_pretrained(name_or_path, **kwargs)
    class_name, take_encoder = ENCODERS_OF_FULL_MODELS[model_type]
    encoder = take_encoder(getattr(transformers, class_name).from_pretrained(name_or_path, **kwargs))
    encoder.config._name_or_path = str(name_or_path)
    return encoder


def embedding_rows(weight: torch.Tensor) -> int:
    """Rows of an embedding or LM-head matrix, also while DeepSpeed ZeRO-3 has partitioned it (`ds_shape`)."""
    shape = getattr(weight, "ds_shape", None)
    return int((shape if shape is not None else weight.shape)[0])


def _gathered_for_modification(parameters: list[nn.Parameter]):
    """DeepSpeed's `GatheredParameters(..., modifier_rank=0)` for ZeRO-3 partitioned parameters, else a no-op."""
    if any(hasattr(p, "ds_id") for p in parameters):
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _as_own_class(model: nn.Module):
    """A context in which `model` has its own class again if FSDP2's `fully_shard` swapped it for its generated
    `FSDP<Name>` subclass: transformers' custom-code save writes `auto_map` and copies source files by the class."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without torch.distributed
        FSDPModule = None
    sharded_class = type(model)
    if FSDPModule is None or not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded_class


def mean_initialise_rows(weight: torch.Tensor, trained_ids: torch.Tensor, new_ids: torch.Tensor) -> None:
    """Sets `weight[new_ids]` as transformers' `mean_resizing` does, from the trained rows `weight[trained_ids]` only
    (never padding rows): a sample of N(mean, 1e-9 * covariance), or the mean if that is not positive definite."""
    if len(new_ids) == 0:
        return
    if len(trained_ids) == 0:
        raise ValueError("No trained embedding rows to initialise the new token rows from (empty tokenizer?).")
    contiguous = torch.equal(trained_ids, torch.arange(len(trained_ids), device=trained_ids.device))
    trained = (weight.data[: len(trained_ids)] if contiguous else weight.data[trained_ids.to(weight.device)]).float()
    mean = trained.mean(0)
    centered = trained - mean
    covariance = 1e-9 * (centered.T @ centered) / trained.shape[0]
    del centered, trained
    if torch.distributions.constraints.positive_definite.check(covariance).all():
        distribution = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
        rows = distribution.sample((len(new_ids),))
    else:
        rows = mean.expand(len(new_ids), -1)
    weight.data[new_ids.to(weight.device)] = rows.to(weight.dtype)


def fit_embeddings_to_tokenizer(
    llm: PreTrainedModel, num_tokens: int, trained_ids: list[int], new_ids: list[int]
) -> None:
    """Makes `llm`'s vocabulary hold `num_tokens` tokens and initialises the rows of the added tokens `new_ids`.

    Resizes only when there are fewer rows than `num_tokens` (a padded vocabulary is never shrunk, so new tokens may
    land on untrained padding rows). The input rows of the new tokens (and untied output rows), and rows added by
    resizing, are set by `mean_initialise_rows` from the rows of `trained_ids`. ZeRO-3 partitioned weights work too.
    """
    rows = embedding_rows(llm.get_input_embeddings().weight)
    if num_tokens > rows:
        # mean_resizing=False: transformers' mean would include the padding rows; ours follows below
        llm.resize_token_embeddings(num_tokens, mean_resizing=False)
        new_ids = sorted(set(new_ids) | set(range(rows, num_tokens)))
    added = torch.tensor(sorted(set(new_ids)), dtype=torch.long)
    trained = torch.tensor(sorted(set(i for i in trained_ids if i < rows) - set(new_ids)), dtype=torch.long)
    if added.numel() == 0:
        return
    input_embeddings, output_embeddings = llm.get_input_embeddings(), llm.get_output_embeddings()
    untied = output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight
    weights = [input_embeddings.weight, output_embeddings.weight] if untied else [input_embeddings.weight]
    bias = getattr(output_embeddings, "bias", None) if untied else None
    with torch.no_grad(), _gathered_for_modification(weights if bias is None else [*weights, bias]):
        for weight in weights:
            mean_initialise_rows(weight, trained, added)
        if bias is not None:
            bias.data[added.to(bias.device)] = bias.data[trained.to(bias.device)].float().mean().to(bias.dtype)


def _lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def _is_plain_tensor(parameter: torch.Tensor) -> bool:
    """Whether `parameter` is a leaf holding its whole data in a plain tensor (not ZeRO-3 partitioned, not FSDP's)."""
    return parameter.is_leaf and not hasattr(parameter, "ds_id") and type(parameter.data) is torch.Tensor


_LOGITS_PER_CHUNK = 2**24
"""Logits (rows x vocabulary) a frozen LM head computes at once in the target-only loss: 64 MiB in float32."""


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")` for a frozen head, in chunks
    of rows whose logits live only while the chunk is computed; `hidden`'s gradient is computed from them right away,
    so backward only scales it. Same loss and gradient without the `[targets, vocab]` logits in memory (the LLM-frozen
    stages' peak; measured in docs/design.md)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_rows):
            rows, chunk_targets = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = F.linear(rows, weight, bias).float()
            log_normaliser = logits.logsumexp(-1, keepdim=True)
            total += (log_normaliser.squeeze(-1) - logits.gather(-1, chunk_targets[:, None]).squeeze(-1)).sum()
            if grad is not None:  # d loss / d logits = softmax - one-hot
                probabilities = logits.sub_(log_normaliser).exp_()
                probabilities[torch.arange(len(rows), device=rows.device), chunk_targets] -= 1
                grad[start : start + chunk_rows] = probabilities.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return None if grad is None else grad * grad_output.to(grad.dtype), None, None, None, None


def _is_plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` with whole plain-tensor parameters and no hooks: its weight may be used outside its forward."""
    return (
        type(module) is nn.Linear
        and all(_is_plain_tensor(p) for p in module.parameters())
        and not (module._forward_hooks or module._forward_pre_hooks)
    )


_FEW_ROWS = 64
"""Up to this many rows (a generation step's batch x beams), a plain CPU head computes `weight @ hidden.T`."""


def _output_logits(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`lm_head(hidden)`. For a plain linear head on CPU and at most `_FEW_ROWS` rows (every decoding step), the same
    dot products as `(weight @ hidden.T).T`: BLAS then splits the vocabulary, not the few rows, over the threads, and
    the step's largest matmul runs 1.1-6x faster on CPU (docs/design.md, "The output head at decoding")."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    if hidden.device.type != "cpu" or rows.shape[0] > _FEW_ROWS or not _is_plain_linear(lm_head):
        return lm_head(hidden)
    logits = (lm_head.weight @ rows.T).T
    if lm_head.bias is not None:
        logits = logits + lm_head.bias
    return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


def _target_cross_entropy(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `lm_head` over the target rows `hidden` (float32 logits); a frozen plain linear head
    takes `_FrozenHeadCrossEntropy`'s chunks."""
    if _is_plain_linear(lm_head) and not any(p.requires_grad for p in lm_head.parameters()):
        chunk_rows = max(1, _LOGITS_PER_CHUNK // lm_head.out_features)
        return _FrozenHeadCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, chunk_rows)
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


class PartAdapterLayer(GradientCheckpointingLayer):
    """A pre-LayerNorm Transformer layer over the downsampled audio frames, attention by `attn_implementation`."""

    is_causal = False
    num_key_value_groups = 1

    def __init__(self, config: PartAdapterConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        residual = hidden_states
        qkv = self.qkv_proj(self.self_attn_layer_norm(hidden_states))
        query, key, value = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.dropout if self.training else 0.0
        attention, _ = attention_interface(
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
        )
        hidden_states = residual + F.dropout(self.out_proj(attention.reshape(batch, length, -1)), dropout)
        residual = hidden_states
        hidden_states = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(hidden_states))))
        return residual + F.dropout(hidden_states, self.dropout, self.training)


class PartPreTrainedModel(PreTrainedModel):
    """Base class of PART models. No separate base model: the causal LM stays whole (`base_model_prefix = ""`)."""

    config: PartConfig
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["PartAdapterLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Initialises missing weights, library submodels by their own rules first (transformers would pass them this
        custom-code model's `is_custom_code=True`, which leaves e.g. WhisperEncoder's sinusoidal positions random)."""
        for module in self.children():
            if isinstance(module, PreTrainedModel) and not module.is_custom_code():
                module.initialize_weights()
        super().initialize_weights()


class PartAdapter(PartPreTrainedModel):
    """Encoder frames -> LLM embeddings: strided conv1d (downsampling first, so the Transformer layers run at the audio
    token rate), Transformer layers, projection. A `PreTrainedModel` over `adapter_config` (its init and attention)."""

    config: PartAdapterConfig
    main_input_name = "hidden_states"

    def __init__(self, config: PartConfig):
        super().__init__(config.adapter_config)
        adapter = config.adapter_config
        self.kernel_size, self.stride = adapter.kernel_size, adapter.downsample_stride
        self.downsample = nn.Conv1d(
            config.audio_hidden_size, adapter.hidden_size, self.kernel_size, self.stride, (self.kernel_size - 1) // 2
        )
        self.activation_fn = ACT2FN[adapter.hidden_act]
        self.layers = nn.ModuleList([PartAdapterLayer(adapter) for _ in range(adapter.num_hidden_layers)])
        self.norm = nn.LayerNorm(adapter.hidden_size, eps=adapter.layer_norm_eps)
        self.projection = nn.Linear(adapter.hidden_size, config.text_config.hidden_size)
        self.post_init()

    def forward(self, hidden_states: torch.Tensor, encoder_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(embeddings [batch, tokens, llm_width], token_lengths [batch])`; shapes follow the padded input alone."""
        frame_mask = _lengths_to_mask(encoder_lengths, hidden_states.shape[1])
        hidden_states = hidden_states * frame_mask.unsqueeze(-1).to(hidden_states.dtype)
        hidden_states = self.activation_fn(self.downsample(hidden_states.transpose(1, 2))).transpose(1, 2)
        token_lengths = adapter_output_lengths(encoder_lengths, self.kernel_size, self.stride)
        attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=_lengths_to_mask(token_lengths, hidden_states.shape[1]),
            allow_is_bidirectional_skip=False,  # the skip test would read the mask on the host
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return self.projection(self.norm(hidden_states)), token_lengths


@dataclass
class PartAudioFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    `last_hidden_state`, `hidden_states`, `attentions`: the encoder's. `pooler_output` (`(clips, audio_positions,
    llm_width)`): the adapter's output, padded past `audio_token_lengths` (`(clips,)`, valid positions per clip).
    """

    audio_token_lengths: torch.LongTensor | None = None


@dataclass
class PartCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    `CausalLMOutputWithPast` (no `logits` when `labels` are given: the loss applies the head to target positions only).
    audio_token_lengths (`torch.LongTensor`, *optional*): audio positions per audio sample.
    num_target_tokens (`torch.LongTensor`, *optional*): target positions that entered the loss.
    """

    audio_token_lengths: torch.LongTensor | None = None
    num_target_tokens: torch.LongTensor | None = None


class PartForSpeechToText(PartPreTrainedModel, GenerationMixin):
    """Speech encoder -> adapter -> causal LLM, for ASR, speech translation and text-only translation."""

    def __init__(self, config: PartConfig):
        super().__init__(config)
        self.audio_tower = build_audio_tower(config.audio_config)
        self.adapter = PartAdapter(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.lora_config is not None:
            self._inject_lora(config.lora_config)
        self.post_init()

    @classmethod
    def from_pretrained_components(
        cls,
        audio_encoder: str | os.PathLike | PreTrainedModel,
        llm: str | os.PathLike | PreTrainedModel,
        tokenizer=None,
        adapter_config: PartAdapterConfig | dict | None = None,
        dtype: torch.dtype | None = None,
        return_tokenizer: bool = False,
        load_kwargs: dict | None = None,
        **config_kwargs,
    ):
        """Builds a new PART model from a pretrained speech encoder and causal LM, with a fresh adapter.

        Args:
            audio_encoder: a hub id / folder of an encoder checkpoint (`load_pretrained_audio_encoder`), or a module.
            llm: a hub id / folder of a causal LM, or a loaded `PreTrainedModel`.
            tokenizer: the LLM's tokenizer (id, folder or object); defaults to the `llm`'s folder. The audio tokens
                are added when missing and their rows initialised by `fit_embeddings_to_tokenizer`.
            adapter_config: settings of the new adapter.
            dtype: dtype of every loaded part (default float32, not the checkpoints' own mixed dtypes).
            return_tokenizer: also return the (extended) tokenizer.
            load_kwargs: options for every `from_pretrained` call (`revision`, `token`, `cache_dir`, ...).
            config_kwargs: further `PartConfig` fields.
        """
        tokenizer_kwargs = {k: v for k, v in (load_kwargs or {}).items() if k != "dtype"}
        load_kwargs = {"dtype": torch.float32, **(load_kwargs or {}), **({"dtype": dtype} if dtype else {})}
        if isinstance(audio_encoder, (str, os.PathLike)):
            audio_encoder = load_pretrained_audio_encoder(audio_encoder, **load_kwargs)
        if isinstance(llm, (str, os.PathLike)):
            llm = AutoModelForCausalLM.from_pretrained(llm, **load_kwargs)
        if tokenizer is None and not getattr(llm, "name_or_path", None):
            raise ValueError("Pass tokenizer= (the LLM's tokenizer): it cannot be found from an in-memory llm.")
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer or llm.name_or_path, **tokenizer_kwargs)
        pretrained_ids = list(tokenizer.get_vocab().values())  # the tokens the LLM was trained with
        missing = [t for t in (AUDIO_TOKEN, AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN) if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        num_tokens = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        fit_embeddings_to_tokenizer(llm, num_tokens, pretrained_ids, tokenizer.convert_tokens_to_ids(missing))

        config = PartConfig(
            audio_config=audio_encoder.config,
            text_config=llm.config,
            adapter_config=adapter_config,
            audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
            **config_kwargs,
        )
        # a skeleton whose parts are replaced right away; no ZeRO-3 `zero.Init` (it cannot partition meta tensors)
        with torch.device("meta"), set_zero3_state():
            model = cls(config)
        model.audio_tower = audio_encoder
        model.language_model = llm
        model.adapter = PartAdapter(config).to(device=llm.device, dtype=llm.dtype)
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            setattr(model.generation_config, name, getattr(tokenizer, name))
        return (model, tokenizer) if return_tokenizer else model

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def enable_input_require_grads(self) -> None:
        """As `PreTrainedModel.enable_input_require_grads`, and also for the encoder's input features, so that reentrant
        activation checkpointing trains an encoder whose first layer is checkpointed."""
        super().enable_input_require_grads()

        def features_require_grad(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            features = kwargs.get("input_features")
            if torch.is_grad_enabled() and features is not None and not features.requires_grad:
                kwargs["input_features"] = features.detach().requires_grad_(True)
            return args, kwargs

        self._require_grads_hooks.append(
            self.audio_tower.register_forward_pre_hook(features_require_grad, with_kwargs=True)
        )

    def _embed(self, input_ids: torch.LongTensor, sparse_gradient: bool = False) -> torch.FloatTensor:
        """The input embeddings of `input_ids`. With `sparse_gradient` (the loss path), a trainable input embedding tied
        to the LM head gets a sparse lookup gradient, which autograd adds into the head's dense one: one vocab x width
        gradient instead of two (measured in docs/design.md). Untied or partitioned embeddings stay dense."""
        embeddings, output_embeddings = self.get_input_embeddings(), self.get_output_embeddings()
        weight = getattr(embeddings, "weight", None)
        if not (
            sparse_gradient
            and isinstance(embeddings, nn.Embedding)
            and torch.is_grad_enabled()
            and weight.requires_grad
            and output_embeddings is not None
            and output_embeddings.weight is weight
            and _is_plain_tensor(weight)
        ):
            return embeddings(input_ids)
        dense, embeddings.sparse = embeddings.sparse, True
        try:
            return embeddings(input_ids)
        finally:
            embeddings.sparse = dense

    def _get_feat_extract_output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Audio positions for clips of `feature_lengths` feature frames (as the processor counts placeholders)."""
        return self.config.audio_token_lengths(feature_lengths, encoder=self.audio_tower)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.FloatTensor,
        feature_attention_mask: torch.LongTensor | None = None,
        **kwargs,
    ) -> PartAudioFeaturesOutput:
        r"""
        Runs the audio encoder and the adapter on `input_features` (as `PartFeatureExtractor` computes them);
        `feature_attention_mask` is 1 on valid frames; `kwargs` go to the encoder (e.g. `output_hidden_states`).
        `pooler_output` is padded (`[clips, audio_positions, llm_width]`, no data-dependent shape).
        """
        family = encoder_family(self.config.audio_config)
        if feature_attention_mask is None:
            frames = input_features.shape[family["time_axis"]]
            feature_attention_mask = input_features.new_ones(input_features.shape[0], frames, dtype=torch.long)
        tower_dtype = next(self.audio_tower.parameters()).dtype
        tower_kwargs = {family["mask_argument"]: feature_attention_mask} if family["mask_argument"] else {}
        encoder_outputs = self.audio_tower(
            input_features=input_features.to(tower_dtype), **tower_kwargs, **kwargs, return_dict=True
        )
        encoder_lengths = encoder_output_lengths(
            self.config.audio_config, feature_attention_mask.sum(-1), encoder=self.audio_tower
        )
        adapter_dtype = self.adapter.projection.weight.dtype  # the encoder may run in another dtype
        embeddings, token_lengths = self.adapter(encoder_outputs.last_hidden_state.to(adapter_dtype), encoder_lengths)
        return PartAudioFeaturesOutput(
            last_hidden_state=encoder_outputs.last_hidden_state,
            pooler_output=embeddings,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            audio_token_lengths=token_lengths,
        )

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        audio_token_lengths: torch.LongTensor | None = None,
    ) -> torch.BoolTensor:
        """Audio placeholder positions expanded to `inputs_embeds`' shape (from `input_ids`, else by the placeholder's
        embedding). With `audio_token_lengths`, also checks without a host-device sync that the samples holding
        placeholders hold, in order, as many as their clips give (others are text-only)."""
        if input_ids is None:
            placeholder = torch.tensor(self.config.audio_token_id, dtype=torch.long, device=inputs_embeds.device)
            mask = (inputs_embeds == self.get_input_embeddings()(placeholder)).all(-1)
        else:
            mask = input_ids == self.config.audio_token_id
        if audio_token_lengths is not None:
            self._check_placeholder_counts(mask, audio_token_lengths.to(mask.device))
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    @staticmethod
    def _check_placeholder_counts(placeholder_mask: torch.BoolTensor, audio_token_lengths: torch.Tensor) -> None:
        # Equal sets of running totals: the samples with placeholders hold the clips' lengths one by one, in order.
        sample_ends = placeholder_mask.sum(-1).cumsum(0)
        clip_ends = audio_token_lengths.cumsum(0)
        clips_end_at_samples = (clip_ends[:, None] == sample_ends[None, :]).any(-1).all()
        samples_end_at_clips = ((sample_ends[:, None] == clip_ends[None, :]).any(-1) | (sample_ends == 0)).all()

        try:  # a device-side assertion on an accelerator (no host-device sync), checked at once on CPU
            torch._assert_async(
                clips_end_at_samples & samples_end_at_clips, "PART input check failed; run on CPU for the full message"
            )
        except RuntimeError as error:
            if audio_token_lengths.numel() == 0:
                raise ValueError(
                    "input_ids contain audio placeholder tokens but no input_features were given; pass the "
                    "processor's input_features and feature_attention_mask."
                ) from error
            raise ValueError(
                "Audio placeholder tokens do not match the audio: per sample "
                f"{placeholder_mask.sum(-1).tolist()} placeholder tokens, while the {audio_token_lengths.numel()} "
                f"audio clips give {audio_token_lengths.tolist()} audio positions (samples without placeholders are "
                "text-only). Build inputs with PartProcessor, which computes the placeholder count from the feature "
                "length exactly as the model does."
            ) from error

    def _merge_audio_embeddings(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        audio_embeddings: torch.FloatTensor,
        audio_token_lengths: torch.LongTensor,
    ) -> torch.FloatTensor:
        """`inputs_embeds` with the placeholders replaced by the clips' valid audio positions (`get_placeholder_mask`
        and `masked_scatter`, as transformers' audio LLMs merge); a stable sort, not boolean indexing, moves the valid
        positions first, so there is no host-device sync or data-dependent shape."""
        placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_token_lengths)
        padding = ~_lengths_to_mask(audio_token_lengths.to(audio_embeddings.device), audio_embeddings.shape[1])
        valid_first = torch.argsort(padding.flatten().to(torch.uint8), stable=True)
        audio = audio_embeddings.flatten(0, 1)[valid_first].to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(placeholder_mask, audio)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        feature_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        audio_repeats: int = 1,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PartCausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch, seq)`): tokens with one audio placeholder per audio position,
            as `PartProcessor` builds them (or `inputs_embeds`, whose placeholders are found by their embedding).
        input_features (`torch.FloatTensor`): features of the samples that have audio, in order.
        feature_attention_mask (`torch.LongTensor`): 1 for valid feature frames.
        labels (`torch.LongTensor` of shape `(batch, seq)`): target ids, `ignore_index` elsewhere. With labels the LM
            head runs on target positions only and `logits` is not returned.
        num_items_in_batch: target tokens of the whole (accumulated) batch, as the Trainer passes it.
        audio_repeats: each clip's audio embeddings serve this many consecutive samples (`generate` with beams or
            several return sequences copies the prompts, not the audio, which is then encoded once per clip).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids, sparse_gradient=labels is not None)
        audio_token_lengths = None
        if input_features is not None:  # after the text embeddings, where rank alignment runs its silent clip
            audio = self.get_audio_features(input_features, feature_attention_mask, return_dict=True)
            audio_embeddings, audio_token_lengths = audio.pooler_output, audio.audio_token_lengths
            if audio_repeats > 1:
                audio_embeddings = audio_embeddings.repeat_interleave(audio_repeats, dim=0)
                audio_token_lengths = audio_token_lengths.repeat_interleave(audio_repeats, dim=0)
            inputs_embeds = self._merge_audio_embeddings(input_ids, inputs_embeds, audio_embeddings, audio_token_lengths)
        elif input_ids is not None and self.config.audio_token_id is not None:
            if cache is None or cache.get_seq_length() == 0:  # no audio: the prompt must hold no placeholders
                self._check_placeholder_counts(input_ids == self.config.audio_token_id, input_ids.new_zeros(0))

        outputs = self.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        lm_head = self.get_output_embeddings()

        loss = logits = num_targets = None
        if labels is not None:
            shifted_labels = labels[:, 1:].to(hidden_states.device)
            target_mask = shifted_labels != self.config.ignore_index
            num_targets = target_mask.sum()
            summed = _target_cross_entropy(lm_head, hidden_states[:, :-1][target_mask], shifted_labels[target_mask])
            denominator = num_items_in_batch if num_items_in_batch is not None else num_targets.clamp(min=1)
            loss = summed / torch.as_tensor(denominator, device=summed.device)
        else:
            logits = _output_logits(lm_head, slice_logits_to_keep(hidden_states, logits_to_keep))

        return PartCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_token_lengths=audio_token_lengths,
            num_target_tokens=num_targets,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        feature_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        generation_config=None,
        **kwargs,
    ):
        """Batched generation (greedy, or beam search with `num_beams`) that returns only the new tokens (also in
        `sequences` with `return_dict_in_generate=True`). Prompts are left-padded, as `PartProcessor` builds them.
        Without `max_new_tokens`/`max_length`: `config.min_new_tokens_budget` new tokens plus
        `config.max_new_tokens_per_second` per second of the longest clip (text-only: twice the prompt's length)."""
        length_given = "max_new_tokens" in kwargs or "max_length" in kwargs
        if not length_given and generation_config is None and self.generation_config.max_new_tokens is None:
            budget = self.config.min_new_tokens_budget
            if feature_attention_mask is not None:
                seconds = float(feature_attention_mask.sum(-1).max()) / self.config.feature_frame_rate
                kwargs["max_new_tokens"] = budget + math.ceil(self.config.max_new_tokens_per_second * seconds)
            elif input_ids is not None:
                kwargs["max_new_tokens"] = budget + 2 * input_ids.shape[-1]
        if input_features is not None:
            kwargs.update(input_features=input_features, feature_attention_mask=feature_attention_mask)
        outputs = super().generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **kwargs
        )
        prompt_length = input_ids.shape[1] if input_ids is not None else 0
        if isinstance(outputs, torch.Tensor):
            return outputs[:, prompt_length:]
        outputs.sequences = outputs.sequences[:, prompt_length:]
        return outputs

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False,
                                      input_ids: torch.LongTensor | None = None, **model_kwargs):
        """As `GenerationMixin`'s, but the audio is not copied for each beam: `forward` encodes each clip once and
        repeats its embeddings (`audio_repeats`) for the copies of its prompt."""
        audio = {key: model_kwargs.pop(key) for key in ("input_features", "feature_attention_mask") if key in model_kwargs}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if expand_size > 1 and audio.get("input_features") is not None:
            audio["audio_repeats"] = expand_size
        return input_ids, {**model_kwargs, **audio}

    # LoRA through peft's own tuner (`peft.tuners.lora.LoraModel`; why not `add_adapter`: docs/design.md), kept
    # outside the module tree (no duplicate parameters in the state dict); its layers live in `language_model`.
    @property
    def has_lora(self) -> bool:
        return self.config.lora_config is not None

    @property
    def lora_tuner(self):
        """peft's `LoraModel` around `language_model` (None without LoRA)."""
        return self.__dict__.get("_lora_tuner")

    def add_lora(self, lora_config=None, **lora_kwargs) -> None:
        """Adds LoRA to the LLM (default: rank 16, alpha 32, dropout 0.05 on the attention and MLP projections);
        `lora_config` is a `peft.LoraConfig` or a dict of its fields."""
        if self.has_lora:
            raise ValueError("The LLM already has LoRA; merge_lora() first to add a new one.")
        settings = {**DEFAULT_LORA_CONFIG, "target_modules": DEFAULT_LORA_TARGETS}
        if lora_config is not None:
            settings.update(lora_config if isinstance(lora_config, dict) else lora_config.to_dict())
        settings.update(lora_kwargs)
        self._inject_lora(settings)

    def _inject_lora(self, settings: dict) -> None:
        """LoRA from a dict of `peft.LoraConfig` fields (unknown keys, as from another peft release, are dropped);
        `config.lora_config` stores every field as JSON values, so that loading rebuilds the same LoRA modules."""
        import peft

        unstored = {"peft_type", "task_type", "base_model_name_or_path", "revision"}
        allowed = set(peft.LoraConfig.__dataclass_fields__) - unstored
        lora_config = peft.LoraConfig(task_type=None, **{k: v for k, v in settings.items() if k in allowed})
        if lora_config.use_dora:
            raise ValueError("DoRA is not supported by PART's merge/save; use plain LoRA (use_dora=False).")
        self.__dict__["_lora_tuner"] = peft.tuners.lora.LoraModel(self.language_model, lora_config, "default")
        stored = {k: v for k, v in lora_config.to_dict().items() if k not in ("peft_type", "task_type")}
        self.config.lora_config = json.loads(json.dumps(stored, default=_json_value))

    def set_lora_enabled(self, enabled: bool) -> None:
        """Switches the LLM's LoRA on or off, leaving the trainable set as it is (peft's switch would change it)."""
        if not self.has_lora:
            raise ValueError("The LLM has no LoRA; add_lora() first.")
        requires_grad = {p: p.requires_grad for name, p in self.language_model.named_parameters() if ".lora_" in name}
        (self.lora_tuner.enable_adapter_layers if enabled else self.lora_tuner.disable_adapter_layers)()
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)

    def merge_lora(self, safe_merge: bool = False) -> None:
        """Folds the LoRA weights into the LLM (peft's `merge_and_unload`) and removes the LoRA modules."""
        if not self.has_lora:
            return
        self.language_model = self.lora_tuner.merge_and_unload(safe_merge=safe_merge)
        del self.__dict__["_lora_tuner"]
        self.config.lora_config = None

    def merged_lora_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`state_dict` (default: the model's) with LoRA merged into the base weights, the model unchanged: the weights
        are assigned to a meta-device twin merged with `safe_merge=True`, so only the merged layers cost memory."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        # no ZeRO-3 `zero.Init`: only rank 0 gets here, and its partitioning collectives would wait forever
        with torch.device("meta"), set_zero3_state():
            twin = type(self)(copy.deepcopy(self.config))
        twin.load_state_dict(state_dict, strict=False, assign=True)
        twin.merge_lora(safe_merge=True)
        return twin.state_dict()

    def _save_lora_adapter(self, save_directory, is_main_process: bool = True) -> None:
        """The LLM's LoRA as a PEFT adapter folder, loadable with `peft.PeftModel.from_pretrained(llm, folder)`."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        lora_config = copy.deepcopy(self.lora_tuner.peft_config["default"])
        lora_config.base_model_name_or_path = getattr(self.language_model, "name_or_path", None)
        lora_config.save_pretrained(save_directory)
        weights = get_peft_model_state_dict(self.language_model, adapter_name="default")
        weights = {f"base_model.model.{k}": v.detach().contiguous() for k, v in weights.items()}
        save_file(weights, os.path.join(save_directory, "adapter_model.safetensors"), metadata={"format": "pt"})

    def _with_ties(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state_dict` with all names of a tied parameter holding one tensor: FSDP2's gathered state dict copies each
        name, and transformers finds ties by shared storage (a tied head would be written twice)."""
        names_of = {}
        for name, parameter in self.named_parameters(remove_duplicate=False):
            names_of.setdefault(id(parameter), []).append(name)
        state_dict = dict(state_dict)
        for names in names_of.values():
            present = [name for name in names if name in state_dict]
            for name in present[1:]:
                state_dict[name] = state_dict[present[0]]
        return state_dict

    def save_pretrained(self, save_directory, *args, lora_save_mode: str = "merged", state_dict=None, **kwargs):
        """Saves a self-contained checkpoint (weights, config, code for `trust_remote_code`). `lora_save_mode`:
        `"merged"` (default) folds LoRA in; `"unmerged"` keeps it; `"adapter_only"` writes the PEFT adapter alone."""
        if lora_save_mode not in LORA_SAVE_MODES:
            raise ValueError(f"lora_save_mode={lora_save_mode!r}; choose from {LORA_SAVE_MODES}.")
        if lora_save_mode == "adapter_only":
            if not self.has_lora:
                raise ValueError("lora_save_mode='adapter_only' needs LoRA on the LLM; add_lora() first.")
            return self._save_lora_adapter(save_directory, is_main_process=kwargs.get("is_main_process", True))
        if state_dict is not None:
            state_dict = self._with_ties(state_dict)
        with _as_own_class(self):
            if not self.has_lora or lora_save_mode == "unmerged":
                return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
            merged_state_dict = self.merged_lora_state_dict(state_dict)
            lora_config, self.config.lora_config = self.config.lora_config, None
            try:
                return super().save_pretrained(save_directory, *args, state_dict=merged_state_dict, **kwargs)
            finally:
                self.config.lora_config = lora_config


# generate reads `inspect.signature(self.forward)` on every decode step of a custom-code model; through forward's
# decorators that took 0.23 ms a step (docs/design.md). Computed once, the lookup is free.
PartForSpeechToText.forward.__signature__ = inspect.signature(PartForSpeechToText.forward)

__all__ = [
    "PartAdapter",
    "PartAudioFeaturesOutput",
    "PartCausalLMOutputWithPast",
    "PartForSpeechToText",
    "PartPreTrainedModel",
    "build_audio_tower",
    "embedding_rows",
    "fit_embeddings_to_tokenizer",
    "load_pretrained_audio_encoder",
    "mean_initialise_rows",
]
