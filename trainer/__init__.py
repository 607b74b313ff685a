"""The training harness: CIFAR ResNets from `models`, optimized with `znorm_optax`.

One job per module, imports pointing down only:

  datasets        tfds -> whole uint8 splits in host memory
  input_pipeline  device-resident splits, batch indices from (seed, step), on-device augmentation
  state           TrainState, the model, the step-0 state
  optimizers      schedule and optax.chain(gradient transform, base optimizer)
  plan            config checks, step counts and dispatch boundaries
  steps           pmapped train (K steps per dispatch), evaluation
  diagnostics     gradient diagnostics as outputs of a diagnostic step
  checkpoints     Orbax checkpoints, SIGTERM
  metrics         metrics.jsonl (and the studies' JSON-lines records), TensorBoard
  workdir         the workdir and its config.json
  loop            train_and_evaluate(config, workdir)

`train.py` at the repository root is the command line.
"""
