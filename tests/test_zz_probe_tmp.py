import uuid
from tests.test_tracing import *  # noqa
from tests.test_tracing import collector  # noqa

async def test_probe(dev_env, collector):
    for both in (False, True):
        collector.requests.clear()
        tracing = configure_tracing(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
        client = await Client.connect(dev_env.client.service_client.config.target_host, namespace=dev_env.client.namespace,
            data_converter=pydantic_data_converter, interceptors=tracing.interceptors)
        rec = Recorder()
        extra = {"interceptors": tracing.interceptors} if both else {}
        async with make_worker(client, f"tq-{uuid.uuid4()}", rec.activities(), **extra) as w:
            h = await client.start_workflow(PlaybookRun.run, run_input(playbook(ONE_STEP)), id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)
            await h.result()
        tracing.shutdown()
        print(both, sorted(n for n, _, _ in collector.spans()))
