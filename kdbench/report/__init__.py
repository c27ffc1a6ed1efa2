"""What the workflow reports: summary and provenance tables with their intervals (`aggregate`) and figures."""
