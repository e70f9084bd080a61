"""The curation front door's steps (flows/curate.py): the decision (request -> data type, size, plan), the documents
and their items as a workflow's data files, and publishing the gated rows."""
