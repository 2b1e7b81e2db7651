"""Post-training a pretrained LM: InstructGPT's three steps (Ouyang et al., 2022, "Training
language models to follow instructions with human feedback") and DPO, the shortcut that skips
the reward model.

* step 1, supervised fine-tuning on demonstrations: :mod:`.sft` (notebook 07);
* step 2, comparisons ranked by a labeler and a Bradley-Terry reward model: :mod:`.preferences`,
  :mod:`.reward` (notebook 08);
* step 3, PPO against the reward model with a per-token KL penalty to the SFT policy: :mod:`.ppo`;
* DPO on the same comparisons, with no reward model and no sampling: :mod:`.dpo`;
* shared by steps 2 and 3 and DPO: :mod:`.sequences` (prompt + response token grids, response
  masks, log-probabilities, sampled responses);
* :mod:`.recipes`: the one copy of every trained model's configuration and training call, which
  the artifact cache and notebooks 06 and 07 share;
* :mod:`.memorisation`: notebook 06's positive control for memorisation (a copy trained on one
  passage until it recites it) and how often the pre-training saw each character.
"""
