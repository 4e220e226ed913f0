"""The DPO engine: TRL 0.11.4's `DPOTrainer` on a fresh LoRA adapter over the starting policy.

Beside `ppo_engine` (all PPO code), this is the only other module that knows TRL. Given a PEFT model and
no `ref_model`, DPOTrainer's reference is the same model with its adapter disabled: the starting policy,
its start adapter already merged (as PPO's reference is). Both kinds of policy work: a seq2seq model gets
the prompt as encoder input and the response as labels; a causal one, prompt + response with the prompt
masked out of the loss.

TRL 0.11.4 predates the pinned transformers (4.57): Trainer now calls `compute_loss(..., num_items_in_batch)`
and `log(logs, start_time)`, which 0.11.4's DPOTrainer does not accept, and has a `get_batch_samples` of its
own that TRL's (for generating during evaluation) shadows. `_DPOTrainer` takes and drops the new arguments
(the DPO loss is a mean over pairs, so the item count changes nothing) and sends Trainer's calls to
Trainer's method; nothing else differs.

BoNBoN (`loss: bonbon`; Gui, Gârbacea and Veitch 2024, arXiv 2406.00832) trains on pairs of the best and the worst
of n samples of the starting policy with an IPO-style squared loss whose target is what best-of-n itself gives:
under the best-of-n distribution, log π_bon(y)/π_0(y) = log n + (n − 1) log F(r(y)), so the log-ratio gap between
the best and the worst of n samples is (n − 1)(log F(r_best) − log F(r_worst)), whose expectation, F(r) being
uniform under π_0, is (n − 1)(E[log U_max] − E[log U_min]) = (n − 1)(−1/n + H_n) = (n − 1) H_{n−1} (H_k the
harmonic number): `bonbon_target(n)`. The loss is (gap − target)² on whole responses' log-probs (TRL's own IPO
averages them per token, which would change the target), plus TRL's likelihood term on the chosen response
(`rpo_alpha`, the entry's `sft_weight`).
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Callable

from .settings import DPOSettings
from .errors import PipelineError
from .trainer_log import attach_progress

log = logging.getLogger("detox.dpo")

# What TRL logs per step, under the names our curves use (metrics/train/NAME/plots/metrics/dpo/...).
CURVES = {"loss": "dpo/loss", "rewards/margins": "dpo/reward_margin", "rewards/accuracies": "dpo/reward_accuracy",
          "rewards/chosen": "dpo/reward_chosen", "rewards/rejected": "dpo/reward_rejected"}


def trainer_prompts(tokenizer, input_ids: list[list[int]], causal: bool) -> list[str]:
    """The prompts as text for DPOTrainer, which tokenizes them again: for a causal policy with its special
    tokens (chat markup), for a seq2seq one without (the tokenizer appends EOS again, as prepare's did)."""
    return tokenizer.batch_decode(input_ids, skip_special_tokens=not causal)


def trainer_tokenizer(tokenizer, input_ids: list[list[int]], causal: bool):
    """The tokenizer DPOTrainer gets. TRL prepends the BOS token to every causal prompt that lacks it; when
    prepare's prompts have none (GPT-2, SmolLM2), a copy without a BOS token keeps the prompts as prepare
    built them."""
    bos = tokenizer.bos_token_id
    if not causal or bos is None or all(ids and ids[0] == bos for ids in input_ids):
        return tokenizer
    plain = copy.deepcopy(tokenizer)  # (a shallow copy would share its special-token map)
    plain.bos_token = None
    return plain


def bonbon_target(n: int) -> float:
    """BoNBoN's target for the log-ratio gap between the best and the worst of n: (n - 1) H_{n-1} (module doc)."""
    if n < 2:
        raise ValueError(f"best-of-n needs n >= 2, got {n}")
    return (n - 1) * math.fsum(1 / k for k in range(1, n))


def bonbon_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, target: float):
    """(gap - target)^2 per pair, the gap the difference of the two responses' whole-sequence log-ratios."""
    gap = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return (gap - target) ** 2


def _trainer_class(target=None):
    from transformers import Trainer
    from trl import DPOTrainer

    class _DPOTrainer(DPOTrainer):
        def dpo_loss(self, policy_chosen, policy_rejected, reference_chosen, reference_rejected):
            if target is None:  # DPO's own (loss_type sigmoid)
                return super().dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
            losses = bonbon_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, target)
            dev = self.accelerator.device  # the implicit rewards TRL logs, at beta = 1 / (2 target)
            chosen = self.beta * (policy_chosen.to(dev) - reference_chosen.to(dev)).detach()
            rejected = self.beta * (policy_rejected.to(dev) - reference_rejected.to(dev)).detach()
            return losses, chosen, rejected

        def get_batch_samples(self, *args, **kwargs):  # one name, two methods: Trainer's (epoch_iterator,
            if len(args) == 3 or "num_batches" in kwargs:  # num_batches, device) and TRL's (model, batch)
                return Trainer.get_batch_samples(self, *args, **kwargs)
            return super().get_batch_samples(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs)

        def log(self, logs, start_time=None):
            return super().log(logs)

    return _DPOTrainer


class DPOEngine:
    """DPO on a PEFT policy: `train(pairs)` runs TRL's DPOTrainer and reports each logged step."""

    def __init__(self, peft_model, tokenizer, dpo: DPOSettings, seed: int, device, scratch: Path, n: int = 2):
        """`n`: how many reference samples each pair is the best and the worst of (BoNBoN's target)."""
        import torch
        from trl import DPOConfig

        self.model, self.dpo, self.scratch = peft_model, dpo, Path(scratch)
        self.causal = not peft_model.config.is_encoder_decoder
        self.tokenizer = tokenizer
        self.target = bonbon_target(n) if dpo.loss == "bonbon" else None
        beta = dpo.beta if self.target is None else 1 / (2 * self.target)  # IPO's tau: target = 1 / (2 beta)
        if self.target is not None:
            log.info("loss bonbon: target %.4g (n = %d), the log-ratio gap of best-of-n's best and worst samples",
                     self.target, n)
        self.config = DPOConfig(
            output_dir=str(self.scratch), beta=beta, learning_rate=dpo.learning_rate,
            rpo_alpha=dpo.sft_weight or None,  # the likelihood term on the chosen response (TRL's RPO)
            num_train_epochs=dpo.epochs, max_steps=dpo.max_steps, per_device_train_batch_size=dpo.batch_size,
            max_length=dpo.max_length, max_prompt_length=dpo.max_prompt_length,
            max_completion_length=dpo.max_length - dpo.max_prompt_length, logging_steps=dpo.logging_steps,
            save_strategy="no", report_to="none", seed=seed, bf16=peft_model.dtype == torch.bfloat16,
            use_cpu=device.type == "cpu", remove_unused_columns=False,
            disable_tqdm=True,  # Trainer's bar would print every logged step's dict; attach_progress's bar
            gradient_accumulation_steps=1,
            # data-parallel (torchrun): the reference pass (adapter disabled) and the policy pass both go through
            # DDP's forward; broadcasting the (constant) buffers in the second would modify, in place, a tensor
            # the first one's backward needs. Every LoRA parameter is used in each step.
            ddp_broadcast_buffers=False, ddp_find_unused_parameters=False)

    def train(self, pairs: list[dict], on_log: Callable[[int, dict], None]) -> dict:
        """Train on `pairs` (prompt_ids, chosen, rejected); `on_log(step, {curve: value})` per logged step.
        Returns the steps done, the final loss and how many prompts TRL tokenized exactly as prepare did."""
        import datasets

        ids = [p["prompt_ids"] for p in pairs]
        tokenizer = trainer_tokenizer(self.tokenizer, ids, self.causal)
        rows = datasets.Dataset.from_dict({"prompt": trainer_prompts(self.tokenizer, ids, self.causal),
                                           "chosen": [p["chosen"] for p in pairs],
                                           "rejected": [p["rejected"] for p in pairs]})

        warnings.filterwarnings("ignore", message=".*`tokenizer` is deprecated", category=FutureWarning)  # TRL's
        try:
            trainer = _trainer_class(self.target)(model=self.model, ref_model=None, args=self.config,
                                                  train_dataset=rows,
                                                  tokenizer=tokenizer)
        except ValueError as err:
            raise PipelineError(f"DPOTrainer refused the pairs: {str(err).splitlines()[0][:300]}") from None
        attach_progress(trainer, "DPO", CURVES, on_log, needs="loss")  # DVCLive rows, not printed dicts
        exact = self._same_prompts(trainer.train_dataset, ids)
        result = trainer.train()
        self.model.eval()
        return {"steps_done": result.global_step, "train_loss": result.training_loss, "prompts_exact": exact}

    def _same_prompts(self, tokenized, ids: list[list[int]]) -> int:
        key = "prompt_input_ids"
        if key not in tokenized.column_names:
            return len(ids)
        same = prompts_exact(tokenized[key], ids)
        log.info("%d of %d prompts tokenized by DPOTrainer exactly as prepare built them", same, len(ids))
        return same


def prompts_exact(tokenized: list[list[int]], ids: list[list[int]]) -> int:
    """How many prompts DPOTrainer's own tokenization gives exactly as prepare built them: a difference (a cut
    prompt included) would train on other prompts than those the policy is evaluated on. The settings refuse
    prompts longer than dpo.max_prompt_length, so TRL cuts none."""
    return sum(list(t) == list(p) for t, p in zip(tokenized, ids))
