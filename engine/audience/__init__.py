"""Who is told: campaigns, subscriptions, incoming SMS, the employee directory."""
