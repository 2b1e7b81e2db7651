"""Post-training a pretrained LM: InstructGPT's three steps and DPO.

Modules: :mod:`sft` (step 1), :mod:`sequences` (token grids and log-probabilities),
:mod:`preferences` and :mod:`reward` (step 2), :mod:`ppo` (step 3), :mod:`dpo`, and
:mod:`recipes`, the one copy of every trained model's recipe.

InstructGPT (Ouyang et al., 2022, "Training language models to follow instructions with human
feedback") has three steps; step 1, supervised fine-tuning (SFT), is :mod:`.sft`;
steps 2 and 3, and the shortcut that skips the reward model:

* **Step 2, comparisons and a reward model.** For a prompt x the SFT policy samples K responses;
  a labeler ranks them, and every ranked pair becomes a comparison (y_w preferred to y_l). Our
  labeler is a program (:func:`labeler_score`): an exact answer first, then character-level
  similarity to the right answer. The reward model r_theta(x, y) -- the SFT GPT with its LM head
  replaced by a scalar head read at the response's last token -- is trained with the
  Bradley-Terry loss of Christiano et al. (2017) and InstructGPT:
  ``loss(theta) = -E log sigma(r_theta(x, y_w) - r_theta(x, y_l))``.
* **Step 3, PPO.** The policy pi_phi^RL starts as a copy of pi^SFT and maximises InstructGPT's
  objective ``E[r_theta(x, y)] - beta KL(pi_phi^RL || pi^SFT)``. The KL is paid per token: the
  token-level reward is ``r_t = -beta (log pi(y_t | x, y_<t) - log pi^SFT(y_t | x, y_<t))``, and
  r_theta(x, y) is added at the last token (:func:`kl_penalty_rewards`). PPO (Schulman et al.,
  2017) reuses each batch of samples for a few gradient steps and keeps the policy near the one
  that sampled them with the clipped surrogate
  ``L^CLIP = E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)]``,
  ``rho_t = pi(y_t | s_t) / pi_old(y_t | s_t)`` (:func:`ppo_clip_loss`).
* **DPO** (Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is
  Secretly a Reward Model") trains the policy on the same pairs with no reward model and no
  sampling: ``-log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) -
  log pi_ref(y_l|x))])`` (:func:`dpo_loss`).

**Baseline.** Instead of a learned value function (InstructGPT initialises one from the reward
model) we sample ``group_size`` responses per prompt and use, for each response, the mean return
of the *other* responses to the same prompt as its baseline (leave-one-out, as in Ahmadian et al.,
2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
LLMs"; GRPO, Shao et al., 2024, is the same idea). The reward arrives once, at the end of a
20-token answer, so a value network would mostly have to learn "how good is this prompt", which
the other samples of the same prompt tell us directly; the baseline does not depend on the
response's own tokens, so the policy gradient stays unbiased, and there is no second network to
train or tune.

Sequences are right-padded token ids ``ids`` (B, T) with ``prompt_lens`` and ``lengths`` (B,):
the response is ``ids[b, prompt_lens[b]:lengths[b]]``. Per-token quantities (log-probabilities,
rewards, advantages) live on the (B, T - 1) grid of *predicted* tokens, where column t holds
token t + 1 predicted from the tokens up to t; :func:`response_mask` marks the response there.
"""
