"""Drop the single-column indexes of three foreign keys that every ack paid for and no read
needs: `NodeAck.release` ((release, status) starts with it), `FleetNodeAck.node` ((node,
channel) starts with it) and `FleetNodeAck.release` (only read when a release is deleted).

Only the indexes go (`DROP INDEX`, found by their columns): Django's own AlterField would
rebuild both tables on SQLite, a long write lock on a large store for nothing.
"""

import django.db.models.deletion
from django.db import migrations, models

# (model, column): its single-column, non-unique indexes are dropped
FOREIGN_KEYS = (
    ("nodeack", "release_id"),
    ("fleetnodeack", "node_id"),
    ("fleetnodeack", "release_id"),
)


def drop_indexes(apps, schema_editor):
    connection = schema_editor.connection
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        for model, column in FOREIGN_KEYS:
            table = apps.get_model("releases", model)._meta.db_table
            constraints = connection.introspection.get_constraints(cursor, table)
            for name, info in constraints.items():
                # PostgreSQL also has a `…_like` index (varchar_pattern_ops) on a varchar key
                if info["index"] and not info["unique"] and not info["primary_key"] and (
                    info["columns"] == [column]
                ):
                    schema_editor.execute(f"DROP INDEX {qn(name)}")


def create_indexes(apps, schema_editor):
    for model, column in FOREIGN_KEYS:
        model_class = apps.get_model("releases", model)
        field = model_class._meta.get_field(column.removesuffix("_id"))
        schema_editor.execute(
            schema_editor._create_index_sql(model_class, fields=[field], suffix="")
        )
        like = getattr(schema_editor, "_create_like_index_sql", None)  # PostgreSQL's backend
        if like is not None and (sql := like(model_class, field)) is not None:
            schema_editor.execute(sql)


class Migration(migrations.Migration):

    dependencies = [
        ("releases", "0004_fill_fleet_tables"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_indexes, create_indexes)],
            state_operations=[
                migrations.AlterField(
                    model_name="fleetnodeack",
                    name="node",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="channel_acks",
                        to="releases.fleetnode",
                    ),
                ),
                migrations.AlterField(
                    model_name="fleetnodeack",
                    name="release",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="releases.release",
                    ),
                ),
                migrations.AlterField(
                    model_name="nodeack",
                    name="release",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="acks",
                        to="releases.release",
                    ),
                ),
            ],
        ),
    ]
