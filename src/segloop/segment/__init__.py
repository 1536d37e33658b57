"""The Segment side of segloop: messages, client, collector, archive and warehouse schema."""
