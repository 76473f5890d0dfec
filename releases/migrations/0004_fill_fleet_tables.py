"""Fill the fleet view's tables (FleetNode, FleetNodeAck) from the events and acks already
stored: from here on the events writer and every ack write keep them up to date."""

from django.db import migrations


def fill(apps, schema_editor):
    connection = schema_editor.connection
    qn = connection.ops.quote_name
    Event = apps.get_model("events", "Event")
    FleetNode = apps.get_model("releases", "FleetNode")
    table = qn(Event._meta.db_table)
    node, ident, received = qn("node_id"), qn("id"), qn("received_at")
    # Each node's newest event: a loose index scan over the (node_id, id) index (as the fleet
    # view used to read it), O(nodes x log events).
    sql = (
        f"WITH RECURSIVE nodes(node) AS ("
        f"SELECT MIN({node}) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN({node}) FROM {table} WHERE {node} > nodes.node) "
        f"FROM nodes WHERE nodes.node IS NOT NULL) "
        f"SELECT e.{node}, e.{received} FROM nodes JOIN {table} e ON e.{ident} = "
        f"(SELECT MAX({ident}) FROM {table} WHERE {node} = nodes.node) "
        f"WHERE nodes.node IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
        fleet = qn(FleetNode._meta.db_table)
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            cursor.executemany(
                f"INSERT INTO {fleet} ({node}, {qn('last_seen')}, {qn('last_heard')}) "
                "VALUES (%s, %s, %s)",
                [(node_id, seen, seen) for node_id, seen in chunk],
            )
    # Every node's newest ack per channel (and the nodes that only acked): the ack-side hook,
    # run once over every node.
    from releases.services import fleet_acks_refresh

    fleet_acks_refresh(node_ids=None, using=connection.alias)


class Migration(migrations.Migration):
    dependencies = [
        ("releases", "0003_create_fleet_tables"),
        ("events", "0003_index_received_at"),
    ]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
