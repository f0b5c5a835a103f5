"""The tuned benchmark: our FM against RecTools SASRec, BERT4Rec and HSTU on ML-100K, one protocol for all.

Protocol, applied to every model alike (the README states it):
- split: per user the last event is test, the second-to-last validation (ties on timestamp broken
  by the per-user hash of fmrec.data.schema.tie_keys, the same sequences for every model);
- training: every event before the validation event;
- selection: validation NDCG@10 is checked every `every` epochs; the checkpoint with the best one
  is the run's model (training stops after `patience` checks without a gain, or at `max_epochs`);
  the grid point is chosen by the same number. Nothing is ever chosen on test;
- scoring: the selected checkpoint ranks all items for the test event, with the validation event
  in the history; seen items filtered; HR@k and NDCG@k.

`tune` runs a grid with one seed and appends each finished point to a JSON file (so it resumes);
`bench` reruns the chosen point of every model with several seeds, prints mean and spread, train
time, and a paired bootstrap 95% interval of the FM's NDCG@10 difference to the best baseline
(chosen on validation) over test users, and writes every run's per-user ranks to JSON so the table
can be printed again without training (`report`). The FM point chosen here is fmrec's default
recipe (fmrec.train.recipe), which `fmrec train` trains.

    protocol   the selection rule (Protocol, Selector), the training clock, one run's record
    runs       one run of one model under the protocol: our FM, or a RecTools model
    grid       the grid, `tune` and `bench`, and the JSON files they resume from
    report     summaries over seeds, the bootstrap interval, and the Markdown tables
"""
