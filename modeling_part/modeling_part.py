"""The PART speech-to-text model: a pretrained speech encoder, a fresh adapter and a pretrained causal LLM.

Adapter outputs replace the audio placeholder embeddings of the prompt; the loss is token cross-entropy over target
positions only, with the LM head applied to those positions alone (no `[batch, seq, vocab]` logits in training).
"""

import contextlib
import copy
import inspect
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_part import PartAdapterConfig, PartConfig, adapter_output_lengths, encoder_output_lengths

logger = logging.get_logger(__name__)

PARAMETER_GROUPS = ("adapter", "encoder_last_k", "encoder", "llm", "llm_lora")
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS_TOKEN = "<|audio_bos|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LORA_CONFIG = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
"""LoRA settings of `add_lora` and of a training stage that trains `llm_lora` without its own `lora`."""
LORA_SAVE_MODES = ("merged", "unmerged", "adapter_only")
# The keyword each encoder's forward takes for its frame mask (None: the encoder takes no mask).
_AUDIO_MASK_ARGUMENT = {"fun_asr_nano_encoder": "input_features_mask", "whisper": None}


def _require_peft():
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is a dependency of the package
        raise ImportError("LoRA on the LLM needs `peft`: pip install peft") from error
    return peft


def lora_config_from_dict(settings: dict):
    """A `peft.LoraConfig` from a dict of its fields (unknown keys, as from another peft release, are dropped)."""
    peft = _require_peft()
    allowed = set(peft.LoraConfig.__dataclass_fields__) - {"peft_type", "base_model_name_or_path", "revision"}
    settings = {k: v for k, v in settings.items() if k in allowed}
    settings["task_type"] = None
    return peft.LoraConfig(**settings)


def lora_config_to_dict(lora_config) -> dict:
    """Every field of a `peft.LoraConfig` as JSON-serialisable values (sets as sorted lists, enums as values), as
    stored in `PartConfig.lora_config` so that loading rebuilds exactly the same LoRA modules."""

    def plain(value):
        if isinstance(value, (set, frozenset)):
            return sorted(plain(v) for v in value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "to_dict"):
            return plain(value.to_dict())
        return getattr(value, "value", value)  # enums

    return {k: plain(v) for k, v in lora_config.to_dict().items() if k not in ("peft_type", "task_type")}


def build_audio_tower(audio_config) -> PreTrainedModel:
    """The speech encoder for `audio_config`: the encoder half of Whisper, else the Auto model of that config."""
    if audio_config.model_type == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(audio_config)
    return AutoModel.from_config(audio_config)


def load_pretrained_audio_encoder(name_or_path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """Loads a pretrained speech encoder: a bare encoder checkpoint, or the encoder of a full ASR model.

    Supports SenseVoice-style `fun_asr_nano_encoder` checkpoints, full `fun_asr_nano` models (their audio tower),
    Whisper checkpoints (their encoder) and any encoder the Auto classes can load. The encoder's config records
    `name_or_path` (as `_name_or_path`), also when it is taken out of a full model, so that a PART config (and its
    model card's `base_model`) says where the encoder came from.
    """
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if config.model_type == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperModel

        encoder = WhisperModel.from_pretrained(name_or_path, **kwargs).get_encoder()
    elif config.model_type == "fun_asr_nano":
        from transformers import FunAsrNanoForConditionalGeneration

        encoder = FunAsrNanoForConditionalGeneration.from_pretrained(name_or_path, **kwargs).model.audio_tower
    else:
        return AutoModel.from_pretrained(name_or_path, **kwargs)
    encoder.config._name_or_path = str(name_or_path)
    return encoder


def _encoder_layers(audio_tower: nn.Module) -> nn.ModuleList:
    layers = getattr(audio_tower, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(audio_tower).__name__} has no `layers` ModuleList, so its last k layers cannot be selected; "
            "use the 'encoder' parameter group instead of 'encoder_last_k'."
        )
    return layers


def parameter_numel(parameter: torch.Tensor) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it (then `numel()` is 0)."""
    return int(parameter.ds_numel) if hasattr(parameter, "ds_id") else parameter.numel()


def embedding_rows(weight: torch.Tensor) -> int:
    """Rows of an embedding or LM-head matrix: its real size, also while DeepSpeed ZeRO-3 has partitioned it
    (`weight.shape` is then `(0,)` on every rank and the full shape is `weight.ds_shape`)."""
    shape = getattr(weight, "ds_shape", None)
    return int((shape if shape is not None else weight.shape)[0])


def _gathered_for_modification(parameters: list[nn.Parameter]):
    """A context in which `parameters` hold their full data and changes made on rank 0 are kept: DeepSpeed's
    `GatheredParameters(..., modifier_rank=0)` for ZeRO-3 partitioned parameters, a no-op otherwise."""
    if any(hasattr(p, "ds_id") for p in parameters):
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)
    return contextlib.nullcontext()


def _without_zero3_init():
    """A context in which `from_config` builds modules without DeepSpeed's `zero.Init` (transformers' own marker
    for "already inside zero.Init"), for skeletons on the meta device, which zero.Init cannot partition, and for
    modules built on one rank only (the meta twin that merges LoRA for saving, on the main process), for which
    zero.Init's partitioning collectives would wait for the other ranks forever."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    from transformers.modeling_utils import set_zero3_state

    return set_zero3_state()


@contextlib.contextmanager
def _as_own_class(model: nn.Module):
    """A context in which `model` has its own class again if FSDP2's `fully_shard` swapped it for the generated
    `FSDP<Name>` subclass (defined in torch's `_fsdp_init` module). transformers' custom-code save reads the class
    to write the config's `auto_map` and to copy the defining source files, so without this a model saved while
    sharded pointed `auto_map` at torch's `_fsdp_init.FSDPPartForSpeechToText` and shipped torch's FSDP files
    instead of `modeling_part.py`. Only the class changes (FSDP2's hooks and parameters stay as they are)."""
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
    """Sets `weight[new_ids]` as transformers' `mean_resizing` initialises added tokens, from the statistics of
    the trained rows `weight[trained_ids]` only (never padding rows): a sample of N(mean, 1e-9 * covariance), or
    the mean itself when that covariance is not positive definite. Works on the full (gathered) weight."""
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

    Resizes only when the embedding matrix has fewer rows than `num_tokens`; a padded vocabulary (Qwen2.5:
    151,936 rows for 151,665 tokens) is never shrunk, so new tokens may land on existing padding rows, which
    pretraining never trained. Either way, every new token's input row (and output row, when the LM head is not
    tied to the input embeddings) is set from the mean and covariance of the rows of `trained_ids`, the tokens
    the tokenizer had before (see `mean_initialise_rows`); rows added by resizing beyond `new_ids` too. Under
    DeepSpeed ZeRO-3 the row count comes from `ds_shape` and the rows are written on gathered parameters.
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
    parameters = [input_embeddings.weight]
    untied = output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight
    if untied:
        parameters.append(output_embeddings.weight)
        if getattr(output_embeddings, "bias", None) is not None:
            parameters.append(output_embeddings.bias)
    with torch.no_grad(), _gathered_for_modification(parameters):
        mean_initialise_rows(input_embeddings.weight, trained, added)
        if untied:
            mean_initialise_rows(output_embeddings.weight, trained, added)
            bias = getattr(output_embeddings, "bias", None)
            if bias is not None:
                bias.data[added.to(bias.device)] = bias.data[trained.to(bias.device)].float().mean().to(bias.dtype)


def _lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def _check_without_sync(condition: torch.Tensor, message) -> None:
    """Raises `ValueError(message())` unless the boolean tensor `condition` is True, without a host-device sync: the
    check is `torch._assert_async`, which an accelerator runs in order with the computation (a failed check there is
    a device-side assertion carrying the message) and a CPU evaluates at once."""
    try:
        torch._assert_async(condition, "PART input check failed; run on CPU for the full message")
    except RuntimeError as error:  # CPU tensors are checked immediately: say what is wrong and what to do
        raise ValueError(message()) from error


def _is_plain_tensor(parameter: torch.Tensor) -> bool:
    """Whether `parameter` is a leaf holding its whole data in a plain tensor: not partitioned by ZeRO-3, not an
    FSDP DTensor or a view into FSDP's flat parameter."""
    return parameter.is_leaf and not hasattr(parameter, "ds_id") and type(parameter.data) is torch.Tensor


_LOGITS_PER_CHUNK = 2**24
"""Logits (rows x vocabulary) a frozen LM head computes at once in the target-only loss: 64 MiB in float32."""


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `F.linear(hidden, weight, bias)` against `targets` for a head that trains nothing, in
    chunks of rows: each chunk's logits live only while the chunk is computed, and the gradient of `hidden` is
    computed from them right away (the head's parameters need none), so backward only scales it. The same loss and
    gradient as `F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")`, without the
    `[targets, vocab]` logits, log-probabilities and their gradient in memory (the LLM-frozen stages' peak; the
    measurement is in docs/design.md)."""

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


def _target_cross_entropy(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `lm_head` over the target rows `hidden` (float32 logits). A frozen plain linear head
    (the LLM-frozen stages) takes `_FrozenHeadCrossEntropy`'s chunks; any other head runs once on all rows."""
    parameters = list(lm_head.parameters())
    if (
        type(lm_head) is nn.Linear
        and not any(p.requires_grad for p in parameters)
        and all(_is_plain_tensor(p) for p in parameters)
        and not (lm_head._forward_hooks or lm_head._forward_pre_hooks)
    ):
        chunk_rows = max(1, _LOGITS_PER_CHUNK // lm_head.out_features)
        return _FrozenHeadCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, chunk_rows)
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention over `[batch, heads, length, head_dim]` inputs with an additive mask; returns
    `([batch, length, heads, head_dim], weights)` like transformers' attention interfaces."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class PartAdapterLayer(GradientCheckpointingLayer):
    """A pre-LayerNorm Transformer layer over the (downsampled) audio frames. Attention goes through transformers'
    `ALL_ATTENTION_FUNCTIONS`, so the model's `attn_implementation` (eager, sdpa, flash) reaches it."""

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
        attention, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attention = attention.reshape(batch, length, -1)
        hidden_states = residual + F.dropout(self.out_proj(attention), self.dropout, self.training)
        residual = hidden_states
        hidden_states = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(hidden_states))))
        return residual + F.dropout(hidden_states, self.dropout, self.training)


class PartAdapter(PreTrainedModel):
    """Encoder frames -> LLM embeddings: strided conv1d (downsampling), Transformer layers, projection.

    Downsampling comes first so the Transformer layers run at the (lower) audio token rate. The adapter is a
    `PreTrainedModel` over `adapter_config`, like the encoder and the LLM over theirs: it initialises its own weights
    (`_init_weights`, in `post_init`, so a fresh adapter starts alike in `PartForSpeechToText(config)` and in
    `from_pretrained_components`) and takes its own attention implementation (`attn_implementation`).
    """

    config_class = PartAdapterConfig
    config: PartAdapterConfig
    base_model_prefix = ""
    main_input_name = "hidden_states"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PartAdapterLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: PartConfig):
        super().__init__(config.adapter_config)
        adapter = config.adapter_config
        self.kernel_size = adapter.kernel_size
        self.stride = adapter.downsample_stride
        self.downsample = nn.Conv1d(
            config.audio_hidden_size,
            adapter.hidden_size,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=(self.kernel_size - 1) // 2,
        )
        self.activation_fn = ACT2FN[adapter.hidden_act]
        self.layers = nn.ModuleList([PartAdapterLayer(adapter) for _ in range(adapter.num_hidden_layers)])
        self.norm = nn.LayerNorm(adapter.hidden_size, eps=adapter.layer_norm_eps)
        self.projection = nn.Linear(adapter.hidden_size, config.text_config.hidden_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear and convolution weights normal with `initializer_range`, zero biases, LayerNorms at identity."""
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def output_lengths(self, encoder_lengths: torch.Tensor) -> torch.Tensor:
        """Audio positions made of `encoder_lengths` encoder frames."""
        return adapter_output_lengths(encoder_lengths, self.kernel_size, self.stride)

    def forward(self, hidden_states: torch.Tensor, encoder_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(embeddings [batch, tokens, llm_width], token_lengths [batch])`; positions past a clip's
        `token_lengths` are padding. Shapes follow the padded input alone (no data-dependent trimming)."""
        frame_mask = _lengths_to_mask(encoder_lengths, hidden_states.shape[1])
        hidden_states = hidden_states * frame_mask.unsqueeze(-1).to(hidden_states.dtype)
        hidden_states = self.activation_fn(self.downsample(hidden_states.transpose(1, 2))).transpose(1, 2)
        token_lengths = self.output_lengths(encoder_lengths)
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
    last_hidden_state (`torch.FloatTensor` of shape `(clips, encoder_frames, encoder_width)`): the encoder's output.
    pooler_output (`torch.FloatTensor` of shape `(clips, audio_positions, llm_width)`): the adapter's output, the
        embeddings that replace the audio placeholders; positions past `audio_token_lengths` are padding.
    hidden_states, attentions: the encoder's, when asked for.
    audio_token_lengths (`torch.LongTensor` of shape `(clips,)`): valid audio positions per clip.
    """

    audio_token_lengths: torch.LongTensor | None = None


@dataclass
class PartCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): token cross-entropy over target positions (labels != ignore_index).
    logits (`torch.FloatTensor`, *optional*): LM head outputs. Not computed when `labels` are given: the loss path
        applies the head to target positions only.
    cache (`Cache`, *optional*): the LLM's KV cache (transformers >= 5.24 calls it `cache`, not `past_key_values`).
    hidden_states, attentions: the LLM's, when asked for.
    audio_token_lengths (`torch.LongTensor`, *optional*): audio positions per audio sample.
    num_target_tokens (`torch.LongTensor`, *optional*): target positions that entered the loss.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_token_lengths: torch.LongTensor | None = None
    num_target_tokens: torch.LongTensor | None = None


class PartPreTrainedModel(PreTrainedModel):
    r"""
    Base class of PART models. The audio encoder, the adapter and the LLM are `PreTrainedModel`s over their
    sub-configs and initialise their own weights.

    There is no separate base model: PART keeps the pretrained causal LM whole (its head, its weight tying, its
    LoRA), so `base_model_prefix` is transformers' default `""` and `base_model` is the model itself.
    """

    config_class = PartConfig
    config: PartConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["PartAdapterLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Initialises missing weights; the encoder and the LLM by their own rules first. transformers passes a
        custom-code model's `is_custom_code=True` down to library submodels, whose `_initialize_weights` then skips
        modules without direct parameters (so WhisperEncoder's sinusoidal positions would be left random)."""
        for module in self.children():
            if isinstance(module, PreTrainedModel) and not module.is_custom_code():
                module.initialize_weights()
        super().initialize_weights()


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

    # ----------------------------------------------------------------------------------------------- assembling
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
            audio_encoder: a hub id / folder of a SenseVoice-style (`fun_asr_nano_encoder` or `fun_asr_nano`) or
                Whisper checkpoint, or an already loaded encoder module.
            llm: a hub id / folder of a causal LM, or a loaded `PreTrainedModel`.
            tokenizer: the LLM's tokenizer (id, folder or object); defaults to the `llm` folder. The audio tokens
                `<|AUDIO|>`, `<|audio_bos|>`, `<|audio_eos|>` are added when missing; the embeddings grow only when
                the LLM has fewer rows than tokens (a padded vocabulary is kept), and the new tokens' rows are
                initialised from the mean and covariance of the pretrained tokens' rows (see
                `fit_embeddings_to_tokenizer`). They stay frozen with the `llm` parameter group.
            adapter_config: settings of the new adapter.
            dtype: dtype of the loaded parts (default float32, not the checkpoints' own dtypes, which differ
                between encoder and LLM on the hub and would leave the trainable parts in half precision).
            return_tokenizer: also return the (extended) tokenizer.
            load_kwargs: options for every `from_pretrained` call (`revision`, `token`, `cache_dir`,
                `trust_remote_code`, ...).
            config_kwargs: further `PartConfig` fields.
        """
        load_kwargs = dict(load_kwargs or {})
        if dtype is not None:
            load_kwargs["dtype"] = dtype
        # one dtype for every part: transformers 5 would load each in its checkpoint's (Whisper-large-v3 float16,
        # Qwen bfloat16), and the trainable parts need float32 unless the user chooses otherwise
        load_kwargs.setdefault("dtype", torch.float32)
        tokenizer_kwargs = {k: v for k, v in load_kwargs.items() if k != "dtype"}
        if isinstance(audio_encoder, (str, os.PathLike)):
            audio_encoder = load_pretrained_audio_encoder(audio_encoder, **load_kwargs)
        if isinstance(llm, (str, os.PathLike)):
            llm_path = llm
            llm = AutoModelForCausalLM.from_pretrained(llm, **load_kwargs)
        else:
            llm_path = getattr(llm, "name_or_path", None)
        if tokenizer is None:
            if not llm_path:
                raise ValueError("Pass tokenizer= (the LLM's tokenizer): it cannot be found from an in-memory llm.")
            tokenizer = llm_path
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer, **tokenizer_kwargs)
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
        with torch.device("meta"), _without_zero3_init():  # a skeleton whose parts are replaced right away
            model = cls(config)
        model.audio_tower = audio_encoder
        model.language_model = llm
        model.adapter = PartAdapter(config).to(device=llm.device, dtype=llm.dtype)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        return (model, tokenizer) if return_tokenizer else model

    # ---------------------------------------------------------------------------------------------- embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def enable_input_require_grads(self) -> None:
        """As `PreTrainedModel.enable_input_require_grads` (the LLM's input embeddings), and also the audio encoder's
        input features: with reentrant activation checkpointing, a checkpointed layer whose inputs need no gradient
        passes none to its weights, so a trainable encoder whose first layer is checkpointed would get none."""
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
        """The input embeddings of `input_ids`. With `sparse_gradient` (the loss path), a trainable input embedding
        tied to the LM head gets a sparse gradient from the lookup (`nn.Embedding.sparse`), which autograd adds into
        the head's dense gradient of the same weight: one dense vocab x width gradient in the step instead of two
        (measured in docs/design.md). Same gradient. Left dense where the embedding is untied (its `.grad` would
        stay sparse, which AdamW refuses) or partitioned (ZeRO-3, FSDP)."""
        embeddings = self.get_input_embeddings()
        output_embeddings = self.get_output_embeddings()
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

    # ------------------------------------------------------------------------------------------------- audio
    def _get_feat_extract_output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Audio positions (adapter outputs) for clips of `feature_lengths` feature frames: the encoder's own
        `_get_feat_extract_output_lengths`, then the adapter's downsampling. The processor's placeholder count uses
        the same functions (`PartConfig.audio_token_lengths`)."""
        return self.config.audio_token_lengths(feature_lengths, encoder=self.audio_tower)

    def encoder_output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Valid encoder frames for clips of `feature_lengths` feature frames."""
        return encoder_output_lengths(self.config.audio_config, feature_lengths, encoder=self.audio_tower)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.FloatTensor,
        feature_attention_mask: torch.LongTensor | None = None,
        **kwargs,
    ) -> PartAudioFeaturesOutput:
        r"""
        Runs the audio encoder and the adapter.

        input_features (`torch.FloatTensor`): the clips' features, as `PartFeatureExtractor` computes them.
        feature_attention_mask (`torch.LongTensor` of shape `(clips, feature_frames)`, *optional*): 1 on valid frames.
        kwargs: passed to the encoder (e.g. `output_hidden_states`, `output_attentions`).

        Returns a [`PartAudioFeaturesOutput`]: `pooler_output` `[clips, audio_positions, llm_width]` (padded, no
        data-dependent shape) and `audio_token_lengths`.
        """
        model_type = self.config.audio_config.model_type
        time_axis = -1 if model_type == "whisper" else 1
        if feature_attention_mask is None:
            feature_attention_mask = torch.ones(
                input_features.shape[0], input_features.shape[time_axis], dtype=torch.long, device=input_features.device
            )
        tower_dtype = next(self.audio_tower.parameters()).dtype
        mask_argument = _AUDIO_MASK_ARGUMENT.get(model_type, "attention_mask")
        tower_kwargs = {mask_argument: feature_attention_mask} if mask_argument else {}
        encoder_outputs = self.audio_tower(
            input_features=input_features.to(tower_dtype), **tower_kwargs, **kwargs, return_dict=True
        )
        encoder_lengths = self.encoder_output_lengths(feature_attention_mask.sum(-1))
        adapter_dtype = self.adapter.projection.weight.dtype  # the encoder may run in another dtype
        embeddings, token_lengths = self.adapter(encoder_outputs.last_hidden_state.to(adapter_dtype), encoder_lengths)
        return PartAudioFeaturesOutput(
            last_hidden_state=encoder_outputs.last_hidden_state,
            pooler_output=embeddings,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            audio_token_lengths=token_lengths,
        )

    def get_audio_embeddings(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(embeddings [clips, tokens, llm_width], token_lengths [clips])`: `get_audio_features` as a pair."""
        outputs = self.get_audio_features(input_features, feature_attention_mask, return_dict=True)
        return outputs.pooler_output, outputs.audio_token_lengths

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        audio_token_lengths: torch.LongTensor | None = None,
    ) -> torch.BoolTensor:
        """Audio placeholder positions, expanded to `inputs_embeds`' shape (from `input_ids`, or by comparing
        `inputs_embeds` with the placeholder's embedding).

        With `audio_token_lengths` it also checks, without a host-device sync, that the samples holding
        placeholders hold, in batch order, exactly as many as their clips give (samples without placeholders are
        text-only): a `ValueError` on CPU, a device-side assertion on an accelerator.
        """
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
        # Running totals: every clip must end where a sample's placeholders end and vice versa (equal sets of
        # cumulative counts), so the samples with placeholders hold the clips' lengths one by one, in order.
        sample_ends = placeholder_mask.sum(-1).cumsum(0)
        clip_ends = audio_token_lengths.cumsum(0)
        clips_end_at_samples = (clip_ends[:, None] == sample_ends[None, :]).any(-1).all()
        samples_end_at_clips = ((sample_ends[:, None] == clip_ends[None, :]).any(-1) | (sample_ends == 0)).all()

        def message() -> str:
            return (
                "Audio placeholder tokens do not match the audio: per sample "
                f"{placeholder_mask.sum(-1).tolist()} placeholder tokens, while the {audio_token_lengths.numel()} "
                f"audio clips give {audio_token_lengths.tolist()} audio positions (samples without placeholders are "
                "text-only). Build inputs with PartProcessor, which computes the placeholder count from the feature "
                "length exactly as the model does."
            )

        _check_without_sync(clips_end_at_samples & samples_end_at_clips, message)

    def _merge_audio_embeddings(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        audio_embeddings: torch.FloatTensor,
        audio_token_lengths: torch.LongTensor,
    ) -> torch.FloatTensor:
        """The text embeddings with the audio placeholders replaced, in order, by the clips' valid audio positions:
        `get_placeholder_mask` (with its count check) and `masked_scatter`, as transformers' audio LLMs merge. The
        valid positions are moved to the front by a stable sort instead of boolean indexing, so the forward makes no
        host-device sync and no data-dependent shape."""
        placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_token_lengths)
        padding = ~_lengths_to_mask(audio_token_lengths.to(audio_embeddings.device), audio_embeddings.shape[1])
        valid_first = torch.argsort(padding.flatten().to(torch.uint8), stable=True)
        audio = audio_embeddings.flatten(0, 1)[valid_first].to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(placeholder_mask, audio)

    def _check_no_placeholders(self, input_ids: torch.LongTensor) -> None:
        if self.config.audio_token_id is None:
            return
        _check_without_sync(
            ~(input_ids == self.config.audio_token_id).any(),
            lambda: (
                "input_ids contain audio placeholder tokens but no input_features were given; pass the processor's "
                "input_features and feature_attention_mask."
            ),
        )

    # ----------------------------------------------------------------------------------------------- forward
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> PartCausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch, seq)`): prompt (+ target) tokens with one audio placeholder
            per audio position, as `PartProcessor` builds them.
        input_features (`torch.FloatTensor`): features of the samples that have audio, in order (text-only
            samples of a mixed batch have none).
        feature_attention_mask (`torch.LongTensor`): 1 for valid feature frames.
        inputs_embeds (`torch.FloatTensor`, *optional*): instead of `input_ids`; audio placeholders are then found
            by their embedding.
        labels (`torch.LongTensor` of shape `(batch, seq)`): target ids, `ignore_index` on prompt/audio/padding.
            With labels the LM head runs on target positions only and `logits` is not returned.
        num_items_in_batch: target-token count of the whole (accumulated) batch, as the Trainer passes it, so
            gradient accumulation averages over tokens correctly.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids, sparse_gradient=labels is not None)
        audio_token_lengths = None
        if input_features is not None:  # after the text embeddings, where rank alignment runs its silent clip
            audio = self.get_audio_features(input_features, feature_attention_mask, return_dict=True)
            audio_token_lengths = audio.audio_token_lengths
            inputs_embeds = self._merge_audio_embeddings(
                input_ids, inputs_embeds, audio.pooler_output, audio_token_lengths
            )
        elif input_ids is not None and (cache is None or cache.get_seq_length() == 0):
            self._check_no_placeholders(input_ids)

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
            if isinstance(denominator, torch.Tensor):
                denominator = denominator.to(summed.device)
            loss = summed / denominator
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = lm_head(hidden_states[:, keep, :])

        return PartCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_token_lengths=audio_token_lengths,
            num_target_tokens=num_targets,
        )

    # ---------------------------------------------------------------------------------------------- generation
    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool = False, **kwargs):
        feature_attention_mask = kwargs.pop("feature_attention_mask", None)
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["feature_attention_mask"] = feature_attention_mask
        return model_inputs

    def default_max_new_tokens(
        self, input_ids: torch.Tensor | None, feature_attention_mask: torch.Tensor | None
    ) -> int | None:
        """Output budget when the caller sets none: bounded by the longest clip's duration (or, text-only, by
        the prompt length), so a runaway hypothesis cannot run to the context limit."""
        budget = self.config.min_new_tokens_budget
        if feature_attention_mask is not None:
            seconds = float(feature_attention_mask.sum(-1).max()) / self.config.feature_frame_rate
            return budget + math.ceil(self.config.max_new_tokens_per_second * seconds)
        if input_ids is not None:
            return budget + 2 * input_ids.shape[-1]
        return None

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
        """Batched generation (greedy by default, beam search with `num_beams`), with KV cache.

        Returns only the new tokens (a tensor, or a `ModelOutput` whose `sequences` hold only the new tokens when
        `return_dict_in_generate=True`). Prompts must be left-padded, as `PartProcessor` builds them for inference.
        Without `max_new_tokens`/`max_length` the output is bounded by `default_max_new_tokens`.
        """
        length_given = "max_new_tokens" in kwargs or "max_length" in kwargs
        if not length_given and generation_config is None and self.generation_config.max_new_tokens is None:
            budget = self.default_max_new_tokens(input_ids, feature_attention_mask)
            if budget is not None:
                kwargs["max_new_tokens"] = budget
        if input_features is not None:
            kwargs["input_features"] = input_features
            kwargs["feature_attention_mask"] = feature_attention_mask
        outputs = super().generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **kwargs
        )
        prompt_length = input_ids.shape[1] if input_ids is not None else 0
        if isinstance(outputs, torch.Tensor):
            return outputs[:, prompt_length:]
        outputs.sequences = outputs.sequences[:, prompt_length:]
        return outputs

    # ----------------------------------------------------------------------------------------- training modes
    def train(self, mode: bool = True):
        """Like `nn.Module.train`, but modules whose parameters are all frozen stay in eval mode (no dropout drift)."""
        super().train(mode)
        if mode:
            self._set_frozen_modules_to_eval(self)
        return self

    @staticmethod
    def _set_frozen_modules_to_eval(module: nn.Module) -> None:
        for child in module.children():
            parameters = list(child.parameters())
            if parameters and not any(p.requires_grad for p in parameters):
                child.eval()
            else:
                PartForSpeechToText._set_frozen_modules_to_eval(child)

    def get_parameter_groups(self, encoder_last_k: int = 8) -> dict[str, dict[str, nn.Parameter]]:
        """The parameter groups the stage trainer switches, by name: `adapter`, `encoder_last_k` (the encoder's
        last `encoder_last_k` layers and any norm after them), `encoder` (all of it), `llm` (the LLM's own
        weights) and `llm_lora` (its LoRA weights; empty without LoRA)."""
        groups: dict[str, dict[str, nn.Parameter]] = {name: {} for name in PARAMETER_GROUPS}
        for name, parameter in self.named_parameters():
            if name.startswith("adapter."):
                groups["adapter"][name] = parameter
            elif name.startswith("audio_tower."):
                groups["encoder"][name] = parameter
            elif ".lora_" in name:
                groups["llm_lora"][name] = parameter
            else:
                groups["llm"][name] = parameter
        layers = _encoder_layers(self.audio_tower)
        if encoder_last_k < 1:
            raise ValueError(f"encoder_last_k={encoder_last_k} must be at least 1.")
        first_top_layer = max(0, len(layers) - encoder_last_k)  # an encoder shallower than k trains whole
        layer_ids = {id(p): index for index, layer in enumerate(layers) for p in layer.parameters()}
        groups["encoder_last_k"] = {
            name: p for name, p in groups["encoder"].items() if layer_ids.get(id(p), len(layers)) >= first_top_layer
        }
        return groups

    def set_trainable(self, groups: Iterable[str], encoder_last_k: int = 8) -> dict[str, int]:
        """Makes exactly the named parameter groups trainable and freezes everything else.

        Returns parameter counts: `{"trainable": ..., "total": ..., <group>: ...}`.
        """
        groups = list(groups)
        unknown = sorted(set(groups) - set(PARAMETER_GROUPS))
        if unknown:
            raise ValueError(f"Unknown parameter group(s) {unknown}; choose from {list(PARAMETER_GROUPS)}.")
        available = self.get_parameter_groups(encoder_last_k)
        if "llm_lora" in groups and not available["llm_lora"]:
            raise ValueError("Parameter group 'llm_lora' is empty: call add_lora() before training the LLM's LoRA.")
        trainable = {id(p) for group in groups for p in available[group].values()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
        counts = {group: sum(parameter_numel(p) for p in available[group].values()) for group in groups}
        counts["trainable"] = sum(parameter_numel(p) for p in self.parameters() if p.requires_grad)
        counts["total"] = sum(parameter_numel(p) for p in self.parameters())
        if self.training:
            self.train()
        return counts

    # -------------------------------------------------------------------------------------------------- LoRA
    # LoRA is driven through peft's own tuner (`peft.tuners.lora.LoraModel`, what `inject_adapter_in_model` builds),
    # not transformers' `add_adapter` integration: that one pins peft versions per transformers release, peft's
    # tuner works with every peft release in our range. The tuner is kept outside the module tree (no duplicate
    # parameters in the state dict); its layers live in `language_model` as usual.
    @property
    def has_lora(self) -> bool:
        return self.config.lora_config is not None

    @property
    def lora_tuner(self):
        """peft's `LoraModel` around `language_model` (None without LoRA)."""
        return self.__dict__.get("_lora_tuner")

    def add_lora(self, lora_config=None, **lora_kwargs) -> None:
        """Adds LoRA to the LLM through `peft` (default: rank 16, alpha 32, dropout 0.05 on the attention and MLP
        projections). `lora_config` may be a `peft.LoraConfig` or a dict of its fields; every field is kept."""
        if self.has_lora:
            raise ValueError("The LLM already has LoRA; merge_lora() first to add a new one.")
        settings = {**DEFAULT_LORA_CONFIG, "target_modules": DEFAULT_LORA_TARGETS}
        if lora_config is not None:
            settings.update(lora_config if isinstance(lora_config, dict) else lora_config.to_dict())
        settings.update(lora_kwargs)
        self._inject_lora(settings)

    def _inject_lora(self, settings: dict) -> None:
        peft = _require_peft()
        lora_config = lora_config_from_dict(settings)
        if lora_config.use_dora:
            raise ValueError("DoRA is not supported by PART's merge/save; use plain LoRA (use_dora=False).")
        self.__dict__["_lora_tuner"] = peft.tuners.lora.LoraModel(self.language_model, lora_config, "default")
        self.config.lora_config = lora_config_to_dict(lora_config)

    def set_lora_enabled(self, enabled: bool) -> None:
        """Switches the LLM's LoRA on or off (off: the base LLM's behaviour). The trainable set is left as it is
        (peft's switch would also set the LoRA weights' `requires_grad`; the stage plan owns that)."""
        if not self.has_lora:
            raise ValueError("The LLM has no LoRA; add_lora() first.")
        lora_parameters = [p for name, p in self.language_model.named_parameters() if ".lora_" in name]
        requires_grad = [p.requires_grad for p in lora_parameters]
        if enabled:
            self.lora_tuner.enable_adapter_layers()
        else:
            self.lora_tuner.disable_adapter_layers()
        for parameter, flag in zip(lora_parameters, requires_grad):
            parameter.requires_grad_(flag)

    def merge_lora(self, safe_merge: bool = False) -> None:
        """Folds the LoRA weights into the LLM (peft's `merge_and_unload`) and removes the LoRA modules."""
        if not self.has_lora:
            return
        self.language_model = self.lora_tuner.merge_and_unload(safe_merge=safe_merge)
        del self.__dict__["_lora_tuner"]
        self.config.lora_config = None

    def merged_lora_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """A state dict with LoRA folded into the base weights by peft's merge, computed from `state_dict`
        (default: the model's) without changing the model. Works on consolidated ZeRO-3 state dicts too.

        The unmerged weights are assigned (not copied) to a meta-device twin whose LoRA is merged with
        `safe_merge=True`, which writes each merged weight to new memory: only the merged layers cost memory."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        with torch.device("meta"), _without_zero3_init():  # under ZeRO-3 only rank 0 gets here
            twin = type(self)(copy.deepcopy(self.config))
        twin.load_state_dict(state_dict, strict=False, assign=True)
        twin.merge_lora(safe_merge=True)
        return twin.state_dict()

    def _save_lora_adapter(self, save_directory, is_main_process: bool = True) -> None:
        """The LLM's LoRA as a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`), loadable
        with `peft.PeftModel.from_pretrained(llm, folder)` on the extended LLM."""
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
        """`state_dict` with the names of each tied parameter (e.g. a tied LM head) holding one tensor. A full state
        dict gathered from FSDP2 shards (`get_model_state_dict`, what the Trainer saves under FSDP) copies every name
        on its own, and transformers finds ties by shared storage: the tied head would be written twice."""
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
        """Saves a self-contained checkpoint (safetensors + config + the code for `trust_remote_code`).

        lora_save_mode: `"merged"` (default) folds LoRA into the LLM weights; `"unmerged"` keeps the LoRA weights
        (to continue training); `"adapter_only"` writes only the LLM's LoRA adapter in PEFT's format.
        """
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


# transformers' generate asks for `inspect.signature(self.forward)` on every decode step of a model registered for an
# Auto class (`is_remote_code()`, for its `cache_position` BC check); resolving it through forward's decorators took
# 0.23 ms a step here. The same signature, computed once, makes that lookup free.
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
    "PARAMETER_GROUPS",
]
