"""What each training stage computes on one sequence: the module DeepSpeed drives.

Stage 1 (`RetrieverObjective`): the LLM is frozen; its full attention's page mass labels the pages each page
needs, and the retriever learns to rank them (listwise contrastive loss).
Stage 2 (`PostTrainObjective`): language modelling where every page is encoded from its retrieved pages
only. The forward is RetroLM's own prefill (the planner's `AttentionPlan` + the registered page attention)
over the whole sequence in one pass, with no cache writes, so gradient checkpointing can recompute layers.
Its logits equal `RetroLM.forward` (inference) on the same ids (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import PagedKVCache
from ..compat import quiet_peft, set_activation_checkpointing
from ..errors import RetroLMError
from ..model import RetroLM, _inner_model
from ..planner import AttentionPlan, plan_forward
from ..retriever import eligible_pages, score_pages
from ..rope import rope_inv_freq
from .config import TrainConfig
from .supervision import (copy_labels, mixed_labels, page_attention_mass, recall_at_k, retrieval_loss,
                          retrieval_need, top_pages)


def page_bookmarks(model: RetroLM, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Retriever (query, key) [N, heads, dim] of each whole page of ids [N*P]; differentiable in the retriever.

    These are the vectors inference computes for completed pages: page j's key, and page j's query, which
    retrieves for page j + 1.
    """
    P = model.config.page_size
    windows = ids.view(-1, P)  # [N, P]
    with torch.no_grad():
        token_embeds = _inner_model(model.base_model).get_input_embeddings()(windows)  # [N, P, E]
    lengths = torch.full((windows.shape[0],), P, device=ids.device)
    return model.retriever(token_embeds, lengths)


def retrieval_terms(model: RetroLM, input_ids: torch.Tensor, train: TrainConfig) -> dict:
    """Stage 1's loss and recall@k on one sequence [1, N*P]: labels from the model's full attention.

    Labels are the far-focused page mass (see `supervision`); recall counts the rows whose page needs
    retrieval more than the average page does.
    """
    config = model.config
    observed = page_attention_mass(model.base_model, input_ids, config.page_size, config.sink_pages,
                                   config.local_pages)
    label = observed.focused_mass()[1:]  # [M, N]: page m is retrieved for by page m-1's query
    queries, keys = page_bookmarks(model, input_ids[0])
    pages = keys.shape[0]
    query_pages = torch.arange(1, pages, device=input_ids.device)  # [M]
    # scaled like attention logits (top-k is unchanged by a constant scale), so the loss starts in a sane range
    scores = score_pages(queries[:-1], keys) / keys[0].numel() ** 0.5  # [M, N]
    _, candidates = eligible_pages(query_pages, pages, config.sink_pages, config.local_pages)
    target = label
    if train.copy_label_weight:
        copies = copy_labels(input_ids[0], config.page_size, train.copy_label_ngram)[1:]
        target = mixed_labels(label, copies, candidates, train.copy_label_weight)
    # the loss learns the (mixed) target; recall below stays on the attention label, comparable across runs
    loss = retrieval_loss(scores, target, candidates, train.temperature, train.label_temperature)
    k = train.recall_k or config.top_k
    needy = retrieval_need(label, candidates) >= 1.0
    recall, rows = recall_at_k(scores.detach(), top_pages(label, candidates, k), candidates, k, rows=needy)
    counted = candidates[(candidates.sum(dim=1) > k) & needy]
    chance = float((k / counted.sum(dim=1).float()).mean()) if rows else float("nan")
    return {"loss": loss, "recall": recall, "recall_chance": chance}


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of logits [1, T, V] on input_ids [1, T], in float32."""
    return F.cross_entropy(logits[0, :-1].float(), input_ids[0, 1:])


class _Objective(nn.Module):
    def __init__(self, model: RetroLM, train: TrainConfig):
        super().__init__()
        self.model = model
        self.train_config = train

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _check(self, input_ids: torch.Tensor) -> None:
        P = self.model.config.page_size
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] % P or input_ids.shape[1] < 2 * P:
            raise RetroLMError(f"training sequences must be [1, T] with T a multiple of page_size={P} and at "
                               f"least two pages; got {tuple(input_ids.shape)}. Prepare data with a matching "
                               "--seq-len and --page-size.")


class RetrieverObjective(_Objective):
    """Stage 1: contrastive retriever training; the LLM is frozen."""

    def forward(self, input_ids: torch.Tensor) -> dict:
        self._check(input_ids)
        return retrieval_terms(self.model, input_ids, self.train_config)

    @torch.no_grad()
    def evaluate(self, input_ids: torch.Tensor) -> dict:
        self._check(input_ids)
        terms = retrieval_terms(self.model, input_ids, self.train_config)
        return {"retrieval_loss": float(terms["loss"]), "recall": terms["recall"],
                "recall_chance": terms["recall_chance"]}


class PostTrainObjective(_Objective):
    """Stage 2: next-token loss with every page encoded from retrieved pages only (RetroLM's prefill path)."""

    def plan(self, input_ids: torch.Tensor) -> AttentionPlan:
        """The inference planner's plan for encoding input_ids [1, T] in one forward from an empty cache."""
        model = self.model
        inner = _inner_model(model.base_model)
        with torch.no_grad():
            scratch = PagedKVCache(0, model.config.page_size, model.config.retriever.num_score_heads,
                                   model.config.retriever.score_dim, device=input_ids.device)
            plan = plan_forward(scratch, input_ids[0], model.retriever, inner.get_input_embeddings(), model.config,
                                rope_inv_freq(inner), hop_stops=model._hop_stop_table())
        plan.backend = "reference" if model.config.attention_backend == "reference" else "sdpa"
        return plan

    def sparse_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        plan = self.plan(input_ids)
        return self.model.base_model(input_ids=input_ids, retrolm_plan=plan, position_ids=plan.position_ids,
                                     use_cache=False).logits

    def forward(self, input_ids: torch.Tensor) -> dict:
        self._check(input_ids)
        loss = lm_loss(self.sparse_logits(input_ids), input_ids)
        out = {"loss": loss, "lm_loss": float(loss.detach())}
        if self.train_config.train_retriever:
            terms = retrieval_terms(self.model, input_ids, self.train_config)
            out["loss"] = loss + self.train_config.retriever_loss_weight * terms["loss"]
            out.update(retrieval_loss=float(terms["loss"].detach()), recall=terms["recall"])
        return out

    @torch.no_grad()
    def evaluate(self, input_ids: torch.Tensor) -> dict:
        """Held-out loss through retrieved pages, and the plain model's full-attention loss for reference."""
        self._check(input_ids)
        metrics = {"lm_loss": float(lm_loss(self.sparse_logits(input_ids), input_ids)),
                   "lm_loss_full_attention": float(lm_loss(self.model.base_model(input_ids=input_ids,
                                                                                 use_cache=False).logits, input_ids))}
        if self.train_config.train_retriever:
            terms = retrieval_terms(self.model, input_ids, self.train_config)
            metrics.update(retrieval_loss=float(terms["loss"]), recall=terms["recall"],
                           recall_chance=terms["recall_chance"])
        return metrics


OBJECTIVES = {"retriever": RetrieverObjective, "post_train": PostTrainObjective}


def build_objective(train: TrainConfig, stage: str, device: torch.device) -> _Objective:
    """Load `train.model` as a RetroLM and mark what `stage` trains.

    Stage 1 trains the retriever (with its bookmark embedding) only. Stage 2 trains LoRA adapters (peft; an
    adapter already in a RetroLM checkpoint is trained further), or every LLM weight (finetune="full"),
    plus the retriever when train_retriever is set. Gradient checkpointing is non-reentrant, which is safe
    here because the training forward never writes a cache.
    """
    dtype = torch.bfloat16 if device.type == "cuda" and train.bf16 else torch.float32
    trains_retriever = stage == "retriever" or train.train_retriever
    knobs = {**train.retrolm, "scorer": "trained"} if trains_retriever else train.retrolm
    # training a retriever starts from the checkpoint's, or from a fresh one when the model has none
    model = RetroLM.from_pretrained(train.model, device=str(device), dtype=dtype, init_retriever=trains_retriever,
                                    **knobs)
    model.requires_grad_(False)
    if trains_retriever:
        model.retriever.requires_grad_(True)
    if stage == "post_train":
        if train.finetune == "full":
            _inner_model(model.base_model).requires_grad_(True)
        elif train.finetune == "lora":
            if hasattr(model.base_model, "peft_config"):
                for name, param in model.base_model.named_parameters():
                    param.requires_grad_("lora_" in name)
            else:
                from peft import LoraConfig, get_peft_model

                lora = LoraConfig(r=train.lora.r, lora_alpha=train.lora.alpha, lora_dropout=train.lora.dropout,
                                  target_modules=list(train.lora.target_modules), task_type="CAUSAL_LM")
                with quiet_peft():
                    model.base_model = get_peft_model(model.base_model, lora)
    inner = _inner_model(model.base_model)
    inner.config.use_cache = False
    if train.gradient_checkpointing and stage == "post_train":
        set_activation_checkpointing(inner, True)
    model.train()
    return OBJECTIVES[stage](model, train)
