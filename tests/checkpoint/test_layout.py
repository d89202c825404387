"""Whole or not: real DCP folders and torch.save files, locally and on a real S3 endpoint (moto server)."""

from __future__ import annotations

import os

import boto3
import pytest
import torch

from foundry.checkpoint.layout import LocalSaveFolder, RemoteSaveFolder, SaveFolder, local_checkpoint_problem, parse_name
from tests.checkpoint.helpers import truncate, write_full, write_sharded

STATE = {'transformer.wte.weight': torch.arange(4096, dtype=torch.float32).reshape(64, 64),
         'transformer.norm_f.weight': torch.ones(64)}


def test_names():
    assert parse_name('ep0-ba12') == ('sharded', 0, 12)
    assert parse_name('ep3-ba120-rank0.pt') == ('full', 3, 120)
    assert parse_name('ep0-ba12.incomplete') is None
    assert parse_name('latest-rank0.pt') is None


def test_sharded_checkpoint_is_whole_only_with_its_index_and_every_byte(tmp_path):
    ckpt = write_sharded(str(tmp_path / 'ep0-ba2'), STATE)
    assert local_checkpoint_problem(ckpt) is None

    data = [f for f in os.listdir(ckpt) if f.endswith('.distcp')]
    truncate(os.path.join(ckpt, data[0]), 0.5)
    assert 'bytes, .metadata needs' in local_checkpoint_problem(ckpt)

    os.remove(os.path.join(ckpt, data[0]))
    assert 'listed in .metadata but missing' in local_checkpoint_problem(ckpt)

    os.remove(os.path.join(ckpt, '.metadata'))
    assert local_checkpoint_problem(ckpt).startswith('no .metadata')


def test_full_checkpoint_cut_short_is_not_whole(tmp_path):
    ckpt = write_full(str(tmp_path / 'ep0-ba2-rank0.pt'), STATE)
    assert local_checkpoint_problem(ckpt) is None
    truncate(ckpt, 0.6)
    assert 'not a complete torch.save file' in local_checkpoint_problem(ckpt)
    assert local_checkpoint_problem(str(tmp_path / 'nothing')) == 'does not exist'


def test_local_folder_newest_whole_skips_broken_newer_ones_and_repoints(tmp_path):
    folder = str(tmp_path)
    for batch in (2, 4, 6):
        write_sharded(os.path.join(folder, f'ep0-ba{batch}'), STATE)
    os.remove(os.path.join(folder, 'ep0-ba6', '.metadata'))  # killed during the save at 6
    os.symlink('ep0-ba4', os.path.join(folder, 'latest-rank0.pt'))
    os.makedirs(os.path.join(folder, 'hf_meta'))

    save = SaveFolder.open(folder)
    assert isinstance(save, LocalSaveFolder)
    assert [r.name for r in save.checkpoints()] == ['ep0-ba2', 'ep0-ba4', 'ep0-ba6']
    chosen, broken = save.newest_whole()
    assert chosen.name == 'ep0-ba4' and chosen.batch == 4 and chosen.kind == 'sharded'
    assert [(r.name, reason.split(' (')[0]) for r, reason in broken] == [('ep0-ba6', 'no .metadata')]

    moved = save.move_aside(broken[0][0])
    assert moved == os.path.join(folder, 'ep0-ba6.incomplete')
    assert sorted(os.listdir(moved)) == sorted(f for f in os.listdir(os.path.join(folder, 'ep0-ba4')) if f != '.metadata')
    assert [r.name for r in save.checkpoints()] == ['ep0-ba2', 'ep0-ba4']

    os.remove(os.path.join(folder, 'latest-rank0.pt'))  # a kill between Composer's remove and symlink
    assert save.latest_pointer() is None
    save.set_latest(chosen)
    assert os.readlink(os.path.join(folder, 'latest-rank0.pt')) == 'ep0-ba4'
    assert save.latest_pointer() == 'ep0-ba4'


def test_local_folder_lists_full_checkpoints_and_parks_a_replaced_run(tmp_path):
    folder = str(tmp_path)
    write_full(os.path.join(folder, 'ep0-ba2-rank0.pt'), STATE)
    write_full(os.path.join(folder, 'ep0-ba10-rank0.pt'), STATE)
    os.symlink('ep0-ba10-rank0.pt', os.path.join(folder, 'latest-rank0.pt'))
    save = LocalSaveFolder(folder)
    assert [(r.name, r.batch, r.kind) for r in save.checkpoints()] == [('ep0-ba2-rank0.pt', 2, 'full'),
                                                                        ('ep0-ba10-rank0.pt', 10, 'full')]
    parked = save.move_all_aside(save.checkpoints())
    assert os.path.basename(parked).startswith('replaced-')
    assert sorted(os.listdir(parked)) == ['ep0-ba10-rank0.pt', 'ep0-ba2-rank0.pt', 'latest-rank0.pt']
    assert save.checkpoints() == [] and not os.path.lexists(os.path.join(folder, 'latest-rank0.pt'))


@pytest.fixture
def remote_folder(make_bucket, s3_endpoint, tmp_path):
    bucket = make_bucket('layout-test')
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    local = tmp_path / 'local'
    for batch in (2, 4):
        write_sharded(str(local / f'ep0-ba{batch}'), STATE)
    write_sharded(str(local / 'ep0-ba6'), STATE)
    for name in ('ep0-ba2', 'ep0-ba4', 'ep0-ba6'):
        for file in os.listdir(local / name):
            if name == 'ep0-ba6' and file == '.metadata':
                continue  # the upload of batch 6 was cut off before its index
            client.upload_file(str(local / name / file), 'layout-test', f'run/ckpt/{name}/{file}')
    client.put_object(Bucket='layout-test', Key='run/ckpt/latest-rank0.pt.symlink', Body=b'run/ckpt/ep0-ba2')
    return f'{bucket}/run/ckpt', client


def test_remote_folder_whole_broken_pointer_and_move_aside(remote_folder):
    uri, client = remote_folder
    save = SaveFolder.open(uri)
    assert isinstance(save, RemoteSaveFolder)
    assert [r.location for r in save.checkpoints()] == [f'{uri}/ep0-ba2', f'{uri}/ep0-ba4', f'{uri}/ep0-ba6']
    chosen, broken = save.newest_whole()
    assert chosen.name == 'ep0-ba4'
    assert broken[0][0].name == 'ep0-ba6' and broken[0][1].startswith('no .metadata')
    assert save.latest_pointer() == 'ep0-ba2'  # Composer uploads the pointer last, so it lags

    moved = save.move_aside(broken[0][0])
    assert moved == f'{uri}/ep0-ba6.incomplete'
    keys = {o['Key'] for o in client.list_objects_v2(Bucket='layout-test')['Contents']}
    assert not any(k.startswith('run/ckpt/ep0-ba6/') for k in keys)
    assert any(k.startswith('run/ckpt/ep0-ba6.incomplete/') and k.endswith('.distcp') for k in keys)

    save.set_latest(chosen)
    body = client.get_object(Bucket='layout-test', Key='run/ckpt/latest-rank0.pt.symlink')['Body'].read()
    assert body == b'run/ckpt/ep0-ba4'


def test_remote_sharded_checkpoint_with_a_short_shard_is_not_whole(remote_folder, tmp_path):
    uri, client = remote_folder
    name = next(o['Key'] for o in client.list_objects_v2(Bucket='layout-test', Prefix='run/ckpt/ep0-ba4/')['Contents']
                if o['Key'].endswith('.distcp'))
    client.put_object(Bucket='layout-test', Key=name, Body=b'short')
    save = RemoteSaveFolder(uri)
    ref = next(r for r in save.checkpoints() if r.name == 'ep0-ba4')
    assert 'bytes, .metadata needs' in save.problem(ref)
