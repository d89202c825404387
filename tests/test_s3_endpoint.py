"""The test S3 endpoint is a real HTTP server that boto3 and streaming talk to."""

import boto3


def test_objects_round_trip_through_the_endpoint(s3_endpoint, make_bucket):
    make_bucket('foundry-smoke')
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    client.put_object(Bucket='foundry-smoke', Key='a/b.txt', Body=b'hello')
    assert client.get_object(Bucket='foundry-smoke', Key='a/b.txt')['Body'].read() == b'hello'
