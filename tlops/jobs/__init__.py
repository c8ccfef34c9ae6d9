"""Jobs: one module per stage (validate, train, gate, register, reconcile, reproduce, sweep,
predict, status, lineage, policy), each using the layers below; never Prefect."""
