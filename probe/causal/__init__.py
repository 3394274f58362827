"""Stage 4, causal: a model + text + edits → effects on the loss.

``intervene`` pins or clamps cells (ablation, steering) and measures the change in bits per
character, many edits as rows of one pass of ``probe.lm.recurrence``; ``gradients``
measures how far back the loss reaches (gradient flow, saliency), through the same
recurrence with hooks that keep the gradient.
"""
