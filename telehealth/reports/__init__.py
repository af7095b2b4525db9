"""Reports on cases: templates, draft → preliminary → signed, addenda, PDF and Encapsulated PDF
back into the study, critical results (危急值) with acknowledgement and escalation."""
