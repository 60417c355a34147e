"""What the project measures of a trained model: the metrics, the activations every analysis
shares, the analyses, interventions and aggregation, training paths, statistics, and the
hand-built controls the verdict rules are run on."""
