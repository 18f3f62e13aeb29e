"""The chat features live (issue 14): frames and endpoints on two gateway processes with the send
and deliver functions on real Kafka, Redis and MariaDB. The store's rules are tested one by one in
test_message_changes.py and test_chat_admin.py; here, what clients see."""
from __future__ import annotations

from common.models import User, db
from tests.integration.conftest import wait_for
from tests.integration.test_messaging import Client, clients, make_users, mid  # noqa: F401 (fixture)

ERROR = "error"


def to(user=None, group=None) -> dict:
    return {"to_user_id": user.id} if user is not None else {"group_id": group}


def sent(client: Client, peer, content: str) -> dict:
    """Send over the socket; the ack."""
    msg_id = mid()
    client.send("send", {"msg_id": msg_id, "content": content, **to(peer)})
    return client.expect("message_ack", where=lambda a: a["msg_id"] == msg_id)


def test_an_edit_and_a_recall_reach_a_second_device_live_and_an_offline_member_through_sync(cfg, gw1, gw2, clients):
    alice, bob = make_users(cfg, 2)
    phone, laptop = clients(gw1, alice), clients(gw2, alice)
    original = sent(phone, bob, "see you at 5")
    laptop.expect("message", where=lambda m: m["msg_id"] == original["msg_id"])

    edit_id = mid()
    phone.send("edit", {"msg_id": edit_id, "target_msg_id": original["msg_id"], "content": "see you at 6", **to(bob)})
    ack = phone.expect("message_ack", where=lambda a: a["msg_id"] == edit_id)
    event = laptop.expect("message", where=lambda m: m["msg_id"] == edit_id)
    assert (event["content_type"], event["target_msg_id"], event["content"], event["seq"]) == \
           ("edit", original["msg_id"], "see you at 6", ack["seq"])

    recall_id = mid()
    laptop.send("recall", {"msg_id": recall_id, "target_msg_id": original["msg_id"], **to(bob)})
    laptop.expect("message_ack", where=lambda a: a["msg_id"] == recall_id)
    phone.expect("message", where=lambda m: m["msg_id"] == recall_id and m["content_type"] == "recall")

    # bob was offline all along: one sync shows the message as it is now, and what happened to it
    reader = clients(gw2, bob)
    reader.send("sync", {"conversation_id": ack["conversation_id"]})
    messages = reader.expect("sync")["messages"]
    assert [(m["content_type"], m["content"], m.get("state")) for m in messages] == [
        ("text", "", "recalled"), ("edit", "", None), ("recall", "", None)]


def test_a_refused_change_is_an_error_frame_with_its_code_and_the_clients_msg_id(cfg, gw1, clients):
    alice, bob = make_users(cfg, 2)
    a, b = clients(gw1, alice), clients(gw1, bob)
    original = sent(a, bob, "mine")
    attempt = mid()
    b.send("edit", {"msg_id": attempt, "target_msg_id": original["msg_id"], "content": "yours", **to(alice)})
    error = b.expect(ERROR, where=lambda e: e["ref"] == attempt)
    assert error["code"] == 40005
    b.send("react", {"msg_id": mid(), "target_msg_id": original["msg_id"], "emoji": "ok", **to(alice)})
    assert b.expect(ERROR)["field"] == "emoji"


def test_reactions_and_delete_for_me_over_the_socket(cfg, gw1, clients):
    alice, bob = make_users(cfg, 2)
    a, b = clients(gw1, alice), clients(gw1, bob)
    original = sent(a, bob, "react to this")
    react_id = mid()
    b.send("react", {"msg_id": react_id, "target_msg_id": original["msg_id"], "emoji": "👍", **to(alice)})
    b.expect("message_ack", where=lambda x: x["msg_id"] == react_id)
    assert a.expect("message", where=lambda m: m["msg_id"] == react_id)["content"] == "👍"
    b.send("delete", {"msg_id": mid(), "target_msg_id": original["msg_id"], "scope": "me", **to(alice)})
    assert b.expect("hidden") == {"target_msg_id": original["msg_id"], "conversation_id": original["conversation_id"],
                                  "scope": "me"}
    b.send("sync", {"conversation_id": original["conversation_id"]})
    assert original["msg_id"] not in {m["msg_id"] for m in b.expect("sync")["messages"]}
    a.send("sync", {"conversation_id": original["conversation_id"]})
    [message] = [m for m in a.expect("sync")["messages"] if m["msg_id"] == original["msg_id"]]
    assert message["reactions"] == [{"emoji": "👍", "count": 1, "me": False}]


def test_the_http_api_readers_search_block_and_group_administration(cfg, gw1, clients):
    owner, admin, member = make_users(cfg, 3)
    call = gw1.call
    status, group = call("POST", "/api/v1/groups", {"name": "ops", "member_ids": [admin.id, member.id]}, owner.token)
    assert status == 201
    gid = group["data"]["group_id"]
    assert call("PUT", f"/api/v1/groups/{gid}/members/{admin.id}/role", {"role": "admin"}, owner.token)[0] == 200
    status, body = call("PATCH", f"/api/v1/groups/{gid}", {"topic": "on call"}, member.token)
    assert (status, body["code"]) == (403, 10004)
    status, body = call("PATCH", f"/api/v1/groups/{gid}", {"topic": "on call"}, admin.token)
    assert (status, body["data"]["topic"]) == (200, "on call")

    word = "zx" + mid()[:8]
    status, ack = call("POST", "/api/v1/messages", {"msg_id": mid(), "group_id": gid, "content": f"{word} rota"},
                       owner.token)
    assert status == 200
    seq = ack["data"]["seq"]
    for reader in (admin, member):
        sock = clients(gw1, reader)
        sock.send("ack", {"conversation_id": gid, "seq": seq, "ack_type": "read"})
    status, body = call("GET", f"/api/v1/messages/search?q={word}", token=member.token)
    assert [m["seq"] for m in body["data"]["messages"]] == [seq]

    def readers():
        return {r["user_id"] for r in call("GET", f"/api/v1/conversations/{gid}/messages/{seq}/readers",
                                           token=owner.token)[1]["data"]["readers"]}
    wait_for(lambda: readers() == {admin.id, member.id}, what="both reads to be counted")

    assert call("POST", f"/api/v1/groups/{gid}/owner", {"user_id": admin.id}, owner.token)[0] == 200
    assert call("DELETE", f"/api/v1/groups/{gid}/members/{owner.id}", token=owner.token)[0] == 200
    status, body = call("DELETE", f"/api/v1/groups/{gid}", token=admin.token)
    assert status == 200 and body["data"]["dissolved_at"]
    status, body = call("POST", "/api/v1/messages", {"msg_id": mid(), "group_id": gid, "content": "hello?"},
                        member.token)
    assert (status, body["code"]) == (410, 40008)

    assert call("PUT", f"/api/v1/blocks/{owner.id}", token=member.token)[1]["data"] == {"user_id": owner.id,
                                                                                        "blocked": True}
    status, body = call("POST", "/api/v1/messages", {"msg_id": mid(), "to_user_id": member.id, "content": "hi"},
                        owner.token)
    assert (status, body["code"]) == (403, 40010)
    with db.connection_context():
        name = User.get_by_id(owner.id).username
    status, body = call("GET", f"/api/v1/users/search?q={name[:6].upper()}", token=member.token)
    assert owner.id in {u["id"] for u in body["data"]["users"]}
    assert all("email" not in u for u in body["data"]["users"])
