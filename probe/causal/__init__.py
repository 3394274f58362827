"""Stage 4, causal: a model + text + edits → effects on the loss.

``intervene`` pins or clamps cells (ablation, steering) and measures the change in bits per
character; ``batched`` runs many edited copies of the model as one batch (for ``intervene``
and the directions' ablation); ``gradients`` measures how far back the loss reaches
(gradient flow, saliency).
"""
