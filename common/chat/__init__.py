"""Conversations and messages, one module per job; callers use ``from common import chat`` and
the names below.

- rules.py: a client's input (pure): validate_send, validate_change, page_limit, seq_param, route_key
- changes.py: what a send says about other messages and users (edit, recall, delete, reactions,
  replies, mentions), authorized before it is stored
- members.py: private conversations, groups, membership (authorization), member lists
- store.py: the one store of messages and of each conversation's seq (store_messages, store_system)
- reads.py: the wire form of a message, history, sync, offline messages, the conversation list
- cursors.py: each member's own: delivered and read cursors, messages deleted for oneself
- groups.py: group administration, each change a ``system`` message in the seq stream
- search.py: full-text message search in one's conversations (FULLTEXT on MariaDB, FTS5 on SQLite)

Used by the send and deliver functions and by the gateway's read endpoints.
"""
from common.chat.members import (block, blocked_ids, contact_ids, member_ids, members_of, membership,
                                 private_conversation)
from common.chat.cursors import hide, move_cursors
from common.chat.groups import (MAX_GROUP, add_members, create_group, dissolve, get_group, group_members, group_view,
                                mute_member, remove_member, set_role, transfer_ownership, update_group)
from common.chat.reads import ack_view, conversations, history, message_view, offline, readers, sync
from common.chat.search import search
from common.chat.rules import (EVENTS, MAX_CONTENT, MAX_PAGE, SYSTEM, page_limit, route_key, seq_param, validate_change,
                               validate_event, validate_send)
from common.chat.store import Stored, forget_cached_conversations, store_messages, store_system

__all__ = ["EVENTS", "MAX_CONTENT", "MAX_GROUP", "MAX_PAGE", "SYSTEM", "ack_view", "add_members", "block",
           "blocked_ids", "contact_ids", "conversations", "create_group", "dissolve",
           "forget_cached_conversations", "get_group", "group_members", "group_view", "hide", "history",
           "member_ids", "members_of", "membership", "message_view", "move_cursors", "mute_member",
           "offline", "page_limit", "private_conversation", "readers", "remove_member", "route_key", "search",
           "seq_param", "set_role", "store_messages", "store_system", "Stored", "sync",
           "transfer_ownership", "update_group", "validate_change", "validate_event", "validate_send"]
