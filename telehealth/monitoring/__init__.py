"""Operations monitoring: Prometheus metrics of the running hub (not the consortium's figures,
which are telehealth.metrics)."""
