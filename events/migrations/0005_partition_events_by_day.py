from django.db import migrations


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite keeps one table
    from events.partitions import convert

    convert(schema_editor, apps.get_model("events", "Event"))


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from events.partitions import unconvert

    unconvert(schema_editor, apps.get_model("events", "Event"))


class Migration(migrations.Migration):
    # PostgreSQL: the events table becomes partitioned by day of arrival, so retention drops
    # whole days (events/partitions.py, docs/performance.md). Every stored row is kept: the old
    # table becomes the partition of everything before the next UTC midnight. The model is
    # unchanged: on PostgreSQL its unique constraint (node_id, event_id) is one unique index per
    # partition, which the ingest's insert respects across partitions.

    dependencies = [
        ("events", "0004_drop_node_type_index"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition),
    ]
