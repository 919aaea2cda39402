"""Campaigns: one message to many recipients between a start and an end (docs/campaigns.md).

A campaign is created (CLI, `POST /campaigns`, or a YAML file under `rules/campaigns/`)
with its recipients resolved once — a subscription list, a CSV file, phone numbers, or a
directory department/group — and stored durably in `campaign_recipients`. The feeder, a
task of the daemon, moves them into the outbox at the campaign's pace; the dispatcher
sends whatever is due there in BSG batch calls of ≤ 50, as it does for every message.

    campaign_recipients ──feeder──► outbox (campaign_id) ──dispatcher──► BSG

- Exactly once: a recipient is marked fed in the transaction that writes its message,
  which gets its BSG reference then; a restart goes on with the recipients still pending.
- Each recipient's window (the campaign's `window`, else the site's `send_window`) is
  read in the site's time zone, or the recipient's own (`timezone` column of a CSV); a
  recipient outside it waits until it opens.
- Never more than a small backlog sits in the outbox, so pause, cancel and the end act
  on almost everything. At the end date, what was not handed to BSG — pending recipients
  and the campaign's queued messages — becomes `expired`, reason "campaign ended" (the
  messages also carry the end as their `stale after`, so none can go later).
- The opt-out list (STOP) and, for a list campaign, a later unsubscribe are checked when
  each recipient is fed: such a number is never messaged (`skipped`).
- Budget: until BSG has priced a message, one message goes at a time; then, before
  feeding, the cost so far (BSG's prices) plus the messages in flight at the highest
  price seen must leave room; when it does not, the campaign stops with an
  admin alert. A low balance (at most `bsg.balance_alert`, else zero) of the BSG account
  a campaign's site uses (the main one, or the site's own `api_key`) stops every running
  campaign of that account the same way; so does BSG refusing for lack of funds. `resume` continues.
"""

from herald.engine.audience.campaigns.declared import check_declared, declared_files, load_declared  # noqa: F401
from herald.engine.audience.campaigns.feeder import Feeder, Planner  # noqa: F401
from herald.engine.audience.campaigns.manage import (  # noqa: F401
    change_state, create, describe_source, list_status, resolve, status, update,
)
from herald.engine.audience.campaigns.spec import (  # noqa: F401
    CHANNELS, DEFAULT_RATE, SOURCES, Spec, parse_rate, parse_spec, read_csv,
)
from herald.engine.errors import CampaignError  # noqa: F401
