"""The API side's long-running processes that are not HTTP: webhook delivery here (`wanq webhook-delivery`);
the dispatcher and upkeep will join it. Like the API they import no torch (they run from the API image)."""
