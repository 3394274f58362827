"""Stage 2, language models: text → trained char-level LSTM / GRU / RNN models, their one
hooked recurrence, and samples.

``model`` holds ``CharRNN``, checkpoints (data only: ``weights_only=True``) and the shipped
models; ``train`` is the training loop; ``recurrence`` is the forward pass written once for
every cell type, with a named hook point for every stream (``run``, ``bits``): every edit,
read-out and gradient of the later stages is a hook on it; ``sample`` generates text
(optionally with cells clamped, through ``recurrence``); ``stepwise`` is the independent
one-step-at-a-time reference that recorded values and interventions are checked against.
"""
