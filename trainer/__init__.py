"""The training harness: CIFAR ResNets from `models`, optimized with `znorm_optax`.

One job per module, imports pointing down only:

  errors          the project's own errors (one line at the command line)
  files           atomic file writes, markdown tables
  cifar_archive   the official CIFAR archive -> a tfds copy, without TensorFlow
  datasets        a tfds copy in any format -> whole uint8 splits in host memory
  input_pipeline  device-resident splits, batch indices from (seed, step), on-device augmentation
  state           TrainState, the model, the step-0 state
  optimizers      schedule and optax.chain(gradient transform, base optimizer)
  plan            config checks, step counts and dispatch boundaries
  steps           the training objective, pmapped train (K steps per dispatch), evaluation
  diagnostics     gradient diagnostics as outputs of a diagnostic step
  checkpoints     Orbax checkpoints, SIGTERM
  metrics         metrics.jsonl (and the studies' JSON-lines records), TensorBoard
  workdir         the workdir and its config.json
  loop            train_and_evaluate(config, workdir)

`train.py` at the repository root is the command line.
"""
