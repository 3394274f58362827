"""Stage 2, language models: text → trained char-level LSTM / GRU / RNN models and samples.

``model`` holds ``CharRNN``, checkpoints (data only: ``weights_only=True``) and the shipped
models; ``train`` is the training loop; ``sample`` generates text (optionally with a cell
clamped); ``stepwise`` is the independent one-step-at-a-time reference recurrence that
recorded values and interventions are checked against.
"""
